"""The ratings gate: the customer's answer to "How did I do?" is stored and thanked once, never sent
to the AI; anything else they write goes on as usual."""
from __future__ import annotations

from chatbot import metrics, ratings
from chatbot.models import Message, Role, Status
from chatbot.stages.base import Stage, Turn, Verdict

KIND = "rating"


class RatingReplies(Stage):
    def claims(self, question: Message) -> bool:
        return ratings.score_in(question) is not None and question.conversation.rating_asked_at is not None

    def verdict(self, turn: Turn) -> Verdict | None:
        conversation, question = turn.conversation, turn.question
        if conversation.rating_asked_at is None or question.created_at < conversation.rating_asked_at:
            return None
        score = ratings.score_in(question)
        if score is None or _spoke_since_asked(question):
            return None
        rating = ratings.record(conversation, question, score)
        if rating is None:
            return None  # rated already: a later "5" is an ordinary message
        metrics.count_rating(rating)
        return Verdict(status=Status.ANSWERED, reply=ratings.THANKS, kind=KIND, note={"rating": score})


def _spoke_since_asked(question: Message) -> bool:
    """Whether the customer wrote something else between the question and this reply: then a bare
    number is about what they wrote, not a rating."""
    conversation = question.conversation
    return Message.select().where(Message.conversation == conversation, Message.role == Role.USER.value,
                                  Message.created_at >= conversation.rating_asked_at,
                                  Message.id < question.id).exists()
