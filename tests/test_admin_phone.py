"""Every admin list on a phone (390 px) and a desktop (1280 px), in a real headless Chromium: the row's
key text and its main action in view, the page never wider than the screen; and a transcript's photo,
voice note and shared location shown as such."""
from __future__ import annotations

import pytest
import requests
from playwright.sync_api import expect

from chatbot import auth
from chatbot.handoff import open_handoff
from chatbot.models import (
    AccessEntry,
    AIConfiguration,
    ApprovedAnswer,
    AuditEvent,
    CannedReply,
    HandoffReason,
    KnowledgeGap,
    KnowledgeSource,
    Message,
    OptOut,
    Rating,
    Tool,
    WhatsAppNumber,
)
from tests.support import conversation_for, inbound_form, sign

# The panel's browser journeys' fixtures: one Chromium per module, the app served on a loopback port.
from tests.test_admin_browser import (
    DESKTOP_WIDTH,
    PASSWORD,
    PHONE_WIDTH,
    complaints_of,
    fits_the_viewport,
    screenshot_folder,
    sign_in,
)
from tests.test_admin_browser import browser as browser
from tests.test_admin_browser import live_url as live_url
from tests.test_admin_browser import page as page
from tests.test_media import VOICE_NOTE, png

ANN, BOB, CY = "whatsapp:+15550001111", "whatsapp:+15550002222", "whatsapp:+15550003333"
# Long values, as customers and operators write them: each must wrap, not push the row off the screen.
ANN_NAME = "Annabel Featherstonehaugh-Wainwright"
TEAPOT = ("Could you tell me whether the blue ceramic teapot with the bamboo handle is back in stock, and "
          "whether you deliver it to Saint-Rémy-de-Provence before the weekend?")
EIFFEL_TOWER = "https://www.openstreetmap.org/?mlat=48.858400&mlon=2.294500#map=17/48.858400/2.294500"


def post_webhook(live_url: str, **fields) -> dict:
    """Post a signed inbound message to the live server, as Twilio does; return its form."""
    url = f"{live_url}/whatsapp/webhook"
    form = inbound_form(**fields)
    answer = requests.post(url, data=form, headers={"X-Twilio-Signature": sign(url, form)}, timeout=10)
    assert answer.status_code == 200, answer.text
    return form


def message_of(form: dict) -> Message:
    return Message.get(Message.twilio_sid == form["MessageSid"])


@pytest.fixture
def everything(live_url, fake_twilio):
    """One row of every list, with values as long as real ones; Cy's photo, voice note and location came
    through the webhook as Twilio posts them."""
    auth.create_or_reset_admin("ops", PASSWORD)
    ann = conversation_for(ANN, ANN_NAME)
    teapot = Message.create(conversation=ann, role="user", status="answered", content=TEAPOT)
    Message.create(conversation=ann, role="assistant", status="sent", content="Yes: it is back, and we deliver.")
    Message.create(conversation=ann, role="user", status="failed", content=TEAPOT, error="OpenRouter 402: no credits")
    Rating.create(conversation=ann, message=teapot, score=1)
    bob = conversation_for(BOB, "Bob")
    waiting = Message.create(conversation=bob, role="user", status="waiting",
                             content="A person please, about my refund")
    open_handoff(None, bob, waiting, HandoffReason.CUSTOMER_REQUEST, "phrase", "wants a refund for order 1043")
    KnowledgeGap.create(message=teapot, question=TEAPOT, reason="no_passage")
    AIConfiguration.create(name="Main assistant for the shop", provider="openrouter",
                           model_name="anthropic/claude-3.5-sonnet-20241022", max_tokens=500, temperature=0.7,
                           system_prompt="Be kind.", is_active=True)
    WhatsAppNumber.create(address="whatsapp:+15550009000", label="Support desk",
                          greeting="Hello! You are writing to the support desk of the tea shop, open 9 to 6.",
                          template_sid="HX" + "0123456789abcdef" * 2, monthly_budget=25)
    OptOut.create(user_phone="whatsapp:+15550005555", number="")
    CannedReply.create(title="Delivery times", text="We deliver within two working days across the country; "
                                                    "islands and mountain villages take a day longer.")
    KnowledgeSource.create(kind="url", title="Delivery and returns policy", status="ready",
                           location="https://shop.example.com/help/delivery-and-returns-policy-for-every-country",
                           content=b"")
    ApprovedAnswer.create(question="When are you open?", answer="Nine to six, Monday to Saturday.")
    Tool.create(name="order_status", description="An order's status, its parcel's carrier and tracking number.",
                url_template="https://shop.example.com/api/v2/orders/{order_id}/status?include=carrier,tracking")
    AccessEntry.create(user_phone="whatsapp:+15550004444", kind="block")
    AuditEvent.create(actor="ops", address="127.0.0.1", action="POST /admin/knowledge/sources/url/",
                      target="https://shop.example.com/help/delivery-and-returns-policy-for-every-country",
                      detail="added with its sitemap")
    photo = post_webhook(live_url, body="", sender=CY, NumMedia="1", MediaContentType0="image/png",
                         MediaUrl0=fake_twilio.add_media(png(), "image/png"))
    voice = post_webhook(live_url, body="", sender=CY, NumMedia="1", MediaContentType0="audio/ogg",
                         MediaUrl0=fake_twilio.add_media(VOICE_NOTE, "audio/ogg"))
    place = post_webhook(live_url, body="", sender=CY, Latitude="48.8584", Longitude="2.2945")
    gone_url = fake_twilio.add_media(png(), "image/png")
    del fake_twilio.storage.files[gone_url.rsplit("/", 1)[-1]]
    gone = post_webhook(live_url, body="Did you get my photo?", sender=CY, NumMedia="1", MediaContentType0="image/png",
                        MediaUrl0=gone_url)
    return {"cy": message_of(photo).conversation_id, "photo": message_of(photo), "voice": message_of(voice),
            "place": message_of(place), "gone": message_of(gone)}


# Each list: its path, then the row's key text and its main action (CSS selectors, each for the first match).
LISTS = {
    "conversations": ("/admin/conversation/?search=Annabel",
                      ["td.col-user_phone", "td.col-profile_name", "td.col-last_message", ".failure-badge"],
                      ".row-transcript"),
    "messages": ("/admin/message/?search=teapot", ["td.col-content", "td.col-status .status-badge"],
                 "a[title='View Record']"),
    "ai-configurations": ("/admin/aiconfiguration/", ["td.col-name", "td.col-model_name", "td.col-is_active"],
                          "a[title='Edit Record']"),
    "numbers": ("/admin/whatsappnumber/", ["td.col-address", "td.col-label", "td.col-is_active"],
                "a[title='Edit Record']"),
    "opt-outs": ("/admin/optout/", ["td.col-user_phone", "td.col-number"], "a.row-remove"),
    # The one opt-out of a fresh database: its removal asks first.
    "opt-out-removal": ("/admin/optout/remove/confirm/?id=1", [], "#remove-opt-out"),
    "playground": ("/admin/playground/", ["#playground-text"], "#playground-send"),
    "webhook-log": ("/admin/webhooklog/", ["td.col-sender", "td.col-verdict"], "a[title='View Record']"),
    "knowledge": ("/admin/knowledge/", [".source-title", ".source-status", "#approved-answers .approved-question",
                                        ".gap-question"], ".resync"),
    "canned-replies": ("/admin/cannedreply/", ["td.col-title", "td.col-text"], "a[title='Edit Record']"),
    "audit-log": ("/admin/audit/", [".audit-actor", ".audit-action"], None),
    "search": ("/admin/search/?q=teapot", [".hit-sender", ".hit-snippet"], ".hit-link"),
    "unhappy": ("/admin/unhappy/", [".unhappy-kind", ".unhappy-sender", ".unhappy-text"], ".unhappy-link"),
    "tools": ("/admin/tools/", [".tool-name", ".tool-risk"], ".edit-tool"),
    "inbox": ("/admin/inbox/", [".handoff-customer", ".handoff-last"], ".open-conversation"),
    "access": ("/admin/access/", ["#access-block td"], "#access-block button"),
}

# Where each selector's first match is, horizontally: shown at all, and its left and right edges.
PLACES = """(selectors) => selectors.map((selector) => {
    const element = document.querySelector(selector);
    if (!element) return {selector, found: false};
    const box = element.getBoundingClientRect();
    return {selector, found: true, shown: box.width > 0 && box.height > 0, left: box.left, right: box.right};
})"""


def out_of_view(page, selectors: list[str]) -> list[str]:
    """The selectors whose first match is missing, hidden, or not wholly within the viewport's width."""
    width = page.evaluate("window.innerWidth")
    return [place["selector"] for place in page.evaluate(PLACES, selectors)
            if not (place["found"] and place["shown"] and place["left"] >= 0 and place["right"] <= width)]


@pytest.mark.parametrize("width", [PHONE_WIDTH, DESKTOP_WIDTH], ids=["phone", "desktop"])
def test_every_list_and_a_transcripts_media_fit_the_screen(page, live_url, everything, width):
    folder = screenshot_folder()
    complaints = complaints_of(page)
    page.set_viewport_size({"width": width, "height": 844 if width == PHONE_WIDTH else 900})
    sign_in(page, live_url)
    problems = {}
    for name, (path, key_text, action) in LISTS.items():
        page.goto(live_url + path)
        page.screenshot(path=folder / f"list-{name}-{width}.png", full_page=True)
        wrong = out_of_view(page, key_text + ([action] if action else []))
        if not fits_the_viewport(page):
            wrong.append("the page is wider than the screen")
        if wrong:
            problems[name] = wrong
    assert not problems, "\n".join(f"{name}: {', '.join(wrong)}" for name, wrong in problems.items())
    assert complaints == []

    # Cy's photo as a thumbnail, the voice note in a player, the location a map link; the photo Twilio no
    # longer has says so.
    page.goto(f"{live_url}/admin/conversation/details/?id={everything['cy']}")
    photo, voice, place, gone = (f"#message-{everything[name].id}" for name in ("photo", "voice", "place", "gone"))
    thumbnail = page.locator(f"{photo} img.media-thumbnail")
    thumbnail.scroll_into_view_if_needed()
    page.wait_for_function("(image) => image.complete && image.naturalWidth > 0", arg=thumbnail.element_handle())
    expect(page.locator(f"{voice} audio.media-player")).to_have_attribute(
        "src", f"/admin/media/{everything['voice'].id}/0")
    assert page.evaluate(f"fetch('/admin/media/{everything['voice'].id}/0').then(r => r.headers.get('Content-Type'))") \
        == "audio/ogg"
    expect(page.locator(f"{place} a.location-link")).to_have_attribute("href", EIFFEL_TOWER)
    page.locator(gone).scroll_into_view_if_needed()
    expect(page.locator(f"{gone} .media-unavailable")).to_have_text(
        "This photo could not be fetched from Twilio: open it to see why.")
    page.screenshot(path=folder / f"transcript-media-{width}.png", full_page=True)
    assert out_of_view(page, [f"{photo} img", f"{voice} audio", f"{place} a.location-link",
                              f"{gone} .media-unavailable"]) == []
    assert fits_the_viewport(page)
    # The one load that failed is the gone photo's.
    assert complaints == ["Failed to load resource: the server responded with a status of 502 (BAD GATEWAY)"]
