"""The webhook log keeps delivery receipts apart from messages, finds an entry by its MessageSid, and
links each entry to the message it brought or reported on and to that message's conversation."""
from __future__ import annotations

import re

import pytest

from chatbot.models import Message, ReplyPart, WebhookLog
from tests.test_delivery_receipts import post_status
from tests.test_webhook_log_admin import page

ADA = "whatsapp:+15550001111"


@pytest.fixture
def answered_and_delivered(client, post_webhook, run_jobs):
    """A customer's message, its answer sent, and Twilio's receipt saying it was delivered."""
    form = post_webhook.message("Where is my parcel?", sender=ADA)
    run_jobs()
    part = ReplyPart.get()
    assert post_status(client, part.twilio_sid, "delivered").status_code == 200
    return form["MessageSid"], part


def rows_of(listing: str) -> list[str]:
    return re.findall(r"<tr>.*?</tr>", listing, re.S)


def test_the_log_opens_on_messages_with_receipts_a_tab_of_their_own(operator, answered_and_delivered):
    inbound_sid, part = answered_and_delivered

    messages = page(operator, "/admin/webhooklog/")
    assert inbound_sid in messages and part.twilio_sid not in messages
    assert re.search(r'class="nav-link active" id="log-kind-messages"', messages)

    receipts = page(operator, "/admin/webhooklog/?kind=receipts")
    assert part.twilio_sid in receipts and inbound_sid not in receipts
    # A receipt's From is the bot's own number: the customer shown is whom the reply went to.
    receipt_row = next(row for row in rows_of(receipts) if part.twilio_sid in row)
    assert "whatsapp:+1555•••1111" in receipt_row and "status_callback" in receipt_row

    everything = page(operator, "/admin/webhooklog/?kind=all")
    assert inbound_sid in everything and part.twilio_sid in everything


def test_a_messagesid_finds_its_entry_whichever_kind_it_is(operator, answered_and_delivered):
    inbound_sid, part = answered_and_delivered

    found = page(operator, f"/admin/webhooklog/?kind=messages&search={part.twilio_sid}")

    assert part.twilio_sid in found and inbound_sid not in found
    assert 'placeholder="MessageSid (SM…, MM…)"' in found
    assert part.twilio_sid not in page(operator, "/admin/webhooklog/?search=SM" + "0" * 32)


def test_each_entry_links_to_its_message_and_conversation(operator, answered_and_delivered):
    inbound_sid, part = answered_and_delivered
    question = Message.get(Message.twilio_sid == inbound_sid)
    conversation = question.conversation_id

    everything = page(operator, "/admin/webhooklog/?kind=all")
    inbound_row = next(row for row in rows_of(everything) if inbound_sid in row)
    receipt_row = next(row for row in rows_of(everything) if part.twilio_sid in row)
    assert f'href="/admin/message/details/?id={question.id}"' in inbound_row
    assert f'href="/admin/conversation/details/?id={conversation}#message-{question.id}"' in inbound_row
    assert f'href="/admin/message/details/?id={part.message_id}"' in receipt_row
    assert f'href="/admin/conversation/details/?id={conversation}#message-{part.message_id}"' in receipt_row

    receipt = WebhookLog.get(WebhookLog.message_sid == part.twilio_sid)
    details = page(operator, f"/admin/webhooklog/details/?id={receipt.id}")
    assert f'href="/admin/message/details/?id={part.message_id}"' in details.split('id="stored-as"')[1]


def test_an_entry_whose_message_is_gone_links_nowhere(operator, post_webhook, answered_and_delivered):
    inbound_sid, _ = answered_and_delivered
    Message.delete().where(Message.twilio_sid == inbound_sid).execute()

    messages = page(operator, "/admin/webhooklog/")
    inbound_row = next(row for row in rows_of(messages) if inbound_sid in row)
    assert "log-message" not in inbound_row
