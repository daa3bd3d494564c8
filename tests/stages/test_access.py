"""The access gate: an allowlist or blocklist keeps senders from the AI, with one notice a day."""
from chatbot.models import AccessEntry, Status
from chatbot.stages.access import AccessPolicy
from tests.stages.conftest import ADA

BOB = "whatsapp:+15550002222"


def test_open_access_lets_everyone_on(services, stored_turn):
    assert AccessPolicy(services.redis, "open", (), "No entry").verdict(stored_turn()) is None


def test_a_sender_off_the_allowlist_is_refused_with_one_notice_a_day(services, stored_turn):
    policy = AccessPolicy(services.redis, "allowlist", ("+15550002222",), "Not for you")
    first = policy.verdict(stored_turn(sender=ADA))
    assert first.status == Status.NOT_ALLOWED and first.reply == "Not for you" and first.refused == "access"
    assert first.note == {"access": "not on the allowlist"} and first.kind == "access"
    second = policy.verdict(stored_turn(sender=ADA))
    assert second.status == Status.NOT_ALLOWED and second.reply is None
    assert policy.verdict(stored_turn(sender=BOB)) is None


def test_a_blocklisted_sender_is_refused(services, stored_turn):
    AccessEntry.add_many(["+15550001111"], "block")
    verdict = AccessPolicy(services.redis, "blocklist", (), "").verdict(stored_turn(sender=ADA))
    assert verdict.note == {"access": "on the blocklist"} and verdict.reply is None
