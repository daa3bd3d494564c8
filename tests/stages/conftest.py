"""A turn to judge, built plainly (no database) or stored (for the gates that query it)."""
from __future__ import annotations

from chatbot.models import Conversation, Message, Role, Status, utcnow
from chatbot.numbers import Assistant
from chatbot.stages.base import Turn
from tests.support import BOT_NUMBER

ADA = "whatsapp:+15550001111"


def make_turn(text: str = "Hello", sender: str = ADA, number: str = "", taken_over: bool = False,
              until: float | None = None, monthly_budget: float | None = None, stored: bool = False) -> Turn:
    """A user message in its conversation, with the number's settings; saved when `stored`."""
    if stored:
        conversation = Conversation.get_by_id(Conversation.resume_or_start_id(sender, number=number))
    else:
        conversation = Conversation(user_phone=sender, number=number)
    if taken_over:
        conversation.paused_at, conversation.paused_by = utcnow(), "ops"
    question = Message(conversation=conversation, role=Role.USER.value, content=text, status=Status.PENDING.value)
    if stored:
        question.save()
    assistant = Assistant(key=number, address=number or BOT_NUMBER, label="Test", monthly_budget=monthly_budget)
    return Turn(conversation, question, assistant, until)
