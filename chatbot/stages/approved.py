"""The approved-answers gate: a question that matches one the business answered is sent that
answer, as written, with no chat-model call (still rate-limited, budgeted and recorded)."""
from __future__ import annotations

import logging

from chatbot.ai import AIAdapterFactory
from chatbot.errors import AIError
from chatbot.knowledge.retrieval import Retriever
from chatbot.models import Status
from chatbot.redact import mask_phone
from chatbot.stages.base import Stage, Turn, Verdict

log = logging.getLogger(__name__)

KIND = "approved_answer"


class ApprovedAnswers(Stage):
    def __init__(self, retriever: Retriever, ai_factory: AIAdapterFactory):
        self.retriever = retriever
        self.ai_factory = ai_factory

    def verdict(self, turn: Turn) -> Verdict | None:
        question = turn.question
        text = question.content.strip()
        if not text or question.metadata.get("media") or question.metadata.get("Latitude"):
            return None
        try:
            adapter = self.ai_factory.current(turn.assistant.ai_configuration_id)
            match, score, cost = self.retriever.approved_answer(adapter, text, turn.conversation.number, turn.until)
        except AIError as error:
            # The model answers instead: an approved answer missed is a slower answer, not a lost one.
            log.warning("message_id=%s sender=%s approved answers not checked: %s", question.id,
                        mask_phone(turn.conversation.user_phone), error)
            return None
        if match is None:
            return None
        return Verdict(Status.ANSWERED, reply=match.answer, kind=KIND, answer=True, cost=cost,
                       model=self.retriever.embedding_model,
                       note={"approved_answer": match.id, "approved_score": score})
