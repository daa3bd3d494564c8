"""Spend matches the bill: playground answers count, marked as playground; `flask chat` lines are no customers."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest

from chatbot.models import Message, Origin, utcnow
from tests.test_dashboard_figures import page_of, tile
from tests.test_playground import say

ADA = "whatsapp:+15550001111"


def spent_tile(page: str, tile_id: str) -> str:
    """A spend tile's amount and its note, as one line of text."""
    card = page.split(f'id="{tile_id}"')[1].split("</div></div>")[0]
    return " ".join(re.sub(r"<[^>]+>", " ", card.split(">", 1)[1]).split())


@pytest.mark.postgres
def test_playground_answers_count_in_spend_as_their_own_line(operator, post_webhook, run_jobs, fake_openrouter,
                                                             services):
    fake_openrouter.cost = 0.02
    post_webhook.message("How late do you open?", sender=ADA)
    run_jobs()
    fake_openrouter.cost = 0.05
    say(operator, "Trying the new prompt")

    page = page_of(operator)
    assert spent_tile(page, "spend-today") == "$0.0700 incl. $0.0500 playground"
    assert spent_tile(page, "spend-month") == "$0.0700 incl. $0.0500 playground"
    # One number's figures: the playground belongs to none.
    assert spent_tile(page_of(operator, number=""), "spend-today") == "$0.0200"
    spending = operator.get("/admin/spending/").get_data(as_text=True)
    assert re.search(r'id="spent-month">Spent this month: \$0\.0700', spending)
    assert "Of which playground trials: $0.0500" in spending and "$0.0200 counts against the caps" in spending
    # The caps hold customers back, never the operator's trials.
    hour_ago = utcnow() - timedelta(hours=1)
    assert Message.spent_for_budgets(ADA, "", hour_ago, hour_ago) == pytest.approx((0.02, 0.02, 0.02))


@pytest.mark.postgres
def test_flask_chat_lines_are_no_customer_messages_or_conversations(operator, cli, fake_openrouter):
    fake_openrouter.cost = 0.01
    assert cli("chat", input="Hello from the terminal\n").exit_code == 0
    # Lines typed for a WhatsApp sender start a conversation under their number, still no customer's.
    assert cli("chat", "--phone", "+15550002222", input="Testing as Bob\n").exit_code == 0
    assert {message.origin for message in Message.select()} == {Origin.CONSOLE.value}

    page = page_of(operator)
    assert (tile(page, "inbound"), tile(page, "answered"), tile(page, "active-conversations")) == ("0", "0", "0")
    # What the AI cost for them is money spent all the same.
    assert spent_tile(page, "spend-today") == "$0.0200"
