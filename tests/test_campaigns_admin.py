"""The Campaigns page: viewers look, admins create from a CSV upload or recent days, send, schedule,
pause, resume and cancel; every action audited; refusals say why and store nothing."""
from __future__ import annotations

import html
import io
import re
from datetime import timedelta

from chatbot.models import AuditEvent, Campaign, CampaignRecipient, Message, Role, Status, utcnow
from chatbot.roles import Role as AdminRole
from tests.conftest import csrf_token
from tests.support import conversation_for
from tests.test_admin_roles import signed_in_as

PAGE = "/admin/campaigns/"
SID = "HX" + "ab12" * 8
ANN = "whatsapp:+15550100001"
CSV = "phone,first_name\n+15550100001,Ann\n+15550100002,Bob\nnot a number,Cy\n"


def post(client, path: str, form: dict | None = None, **options):
    return client.post(path, data={"csrf_token": csrf_token(client, "/admin/"), **(form or {})}, **options)


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def create_form(**changes) -> dict:
    return {"name": "Spring sale", "content_sid": SID, "text": "Hi {{1}}, spring is here.", "variables": "",
            "number": "default", "audience": "file", "file": (io.BytesIO(CSV.encode()), "contacts.csv"), **changes}


def created(client, **changes) -> Campaign:
    response = post(client, PAGE + "create/", create_form(**changes), content_type="multipart/form-data")
    assert response.status_code == 302, text_of(response)
    return Campaign.select().order_by(Campaign.id.desc()).first()


def test_an_admin_creates_a_campaign_from_a_csv_and_sees_what_it_left_out(app, services):
    admin = signed_in_as(app, AdminRole.ADMIN)
    campaign = created(admin)

    page = text_of(admin.get(PAGE + f"{campaign.id}/", follow_redirects=True))
    assert f"Campaign {campaign.id} created as a draft: it will send to 2. Skipped 1: 1 invalid." in page
    assert "line 4: not a phone number in E.164 form (+ and country code): 'not a number'" in page
    assert "{{1}} = column 2" in page and "Hi {{1}}, spring is here." in page
    assert [(r.phone, r.variables) for r in CampaignRecipient.select().order_by(CampaignRecipient.id)] == [
        ("whatsapp:+15550100001", {"1": "Ann"}), ("whatsapp:+15550100002", {"1": "Bob"})]
    assert (campaign.status, campaign.created_by) == ("draft", "admin")
    assert AuditEvent.get(AuditEvent.action == "campaign_created").target == f"campaign {campaign.id}"
    listed = text_of(admin.get(PAGE))
    assert 'id="chart-campaigns"' in listed and f"{campaign.id} · Spring sale" in listed


def test_a_refused_campaign_says_why_keeps_the_form_and_stores_nothing(app, services):
    admin = signed_in_as(app, AdminRole.OWNER)
    response = post(admin, PAGE + "create/", create_form(content_sid="HX123", text="Hi {{1}} and {{2}}"),
                    content_type="multipart/form-data")
    assert response.status_code == 422
    assert "Not created:</strong> 'HX123' is not a Twilio Content SID" in text_of(response)
    assert 'value="Spring sale"' in text_of(response)
    response = post(admin, PAGE + "create/", create_form(text="Hi {{1}} and {{2}}"), content_type="multipart/form-data")
    assert "the text has {{2}} but no variable fills it" in text_of(response)
    assert Campaign.select().count() == 0 and not AuditEvent.select().where(
        AuditEvent.action.startswith("campaign")).exists()


def test_recent_days_audience_is_who_wrote_to_the_number_lately(app, services):
    for phone, days_ago in (("whatsapp:+15550100001", 2), ("whatsapp:+15550100002", 40)):
        conversation = conversation_for(phone)
        Message.create(conversation=conversation, role=Role.USER.value, content="hi", status=Status.ANSWERED.value,
                       created_at=utcnow() - timedelta(days=days_ago))
    admin = signed_in_as(app, AdminRole.ADMIN)
    campaign = created(admin, audience="recent", days="30", file=(io.BytesIO(b""), ""), text="Hello again")
    assert campaign.audience == "wrote to the number in the last 30 days"
    assert [recipient.phone for recipient in campaign.recipients] == ["whatsapp:+15550100001"]


def test_the_buttons_send_schedule_pause_resume_and_cancel_each_audited(app, services):
    admin = signed_in_as(app, AdminRole.ADMIN)
    campaign = created(admin)
    path = PAGE + f"{campaign.id}/"
    at = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")

    assert post(admin, path + "send/", {"at": at}).status_code == 302
    assert Campaign.get_by_id(campaign.id).status == "scheduled"
    assert "will start sending at" in text_of(admin.get(path))
    post(admin, path + "pause/")
    assert Campaign.get_by_id(campaign.id).status == "paused"
    post(admin, path + "resume/")
    assert Campaign.get_by_id(campaign.id).status == "scheduled"  # its time is still to come
    post(admin, path + "send/")
    assert Campaign.get_by_id(campaign.id).status == "sending"
    post(admin, path + "cancel/")
    assert Campaign.get_by_id(campaign.id).status == "cancelled"
    assert {r.status for r in CampaignRecipient.select()} == {"cancelled"}
    page = text_of(post(admin, path + "pause/", follow_redirects=True))
    assert f"Not done: campaign {campaign.id} is cancelled: it cannot be paused now." in page
    assert [row.action for row in AuditEvent.select().order_by(AuditEvent.id)
            if row.action.startswith("campaign")] == [
        "campaign_created", "campaign_scheduled", "campaign_paused", "campaign_resumed", "campaign_sent",
        "campaign_cancelled"]


def test_a_viewer_sees_the_figures_but_no_form_and_may_post_none(app, services):
    campaign = created(signed_in_as(app, AdminRole.ADMIN))
    viewer = signed_in_as(app, AdminRole.VIEWER)
    for page in (PAGE, PAGE + f"{campaign.id}/"):
        shown = text_of(viewer.get(page))
        assert "Spring sale" in shown
        assert not re.search(r'<form method="POST" action="/admin/campaigns/', shown)
    assert post(viewer, PAGE + f"{campaign.id}/send/").status_code == 403
    assert post(viewer, PAGE + "create/", create_form(), content_type="multipart/form-data").status_code == 403
    assert Campaign.get_by_id(campaign.id).status == "draft" and Campaign.select().count() == 1


def test_a_recipient_twilio_refused_is_explained_on_the_campaign_page(app, services, run_jobs, fake_twilio):
    fake_twilio.refused_recipients["whatsapp:+15550100002"] = 21211
    admin = signed_in_as(app, AdminRole.ADMIN)
    campaign = created(admin)
    post(admin, PAGE + f"{campaign.id}/send/")
    run_jobs()
    page = text_of(admin.get(PAGE + f"{campaign.id}/"))
    assert re.search(r'id="figure-sent">1<', page) and re.search(r'id="figure-failed">1<', page)
    assert "+1555•••0002: Twilio error 21211: The user's number is not a valid WhatsApp address." in \
        re.sub(r"<[^>]+>", "", page)
    assert "1 from this number in" in page
    transcript = text_of(admin.get(f"/admin/conversation/details/?id={conversation_for(ANN).id}"))
    marker = re.search(r'the template message of\s+<a href="([^"]+)">campaign (\d+)</a>', transcript)
    assert marker.groups() == (f"/admin/campaigns/{campaign.id}/", str(campaign.id))
    assert "Hi Ann, spring is here." in transcript and "Promote to approved answer" not in transcript
