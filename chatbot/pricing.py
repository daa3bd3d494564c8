"""What an answer is expected to cost before the model is asked: what the budgets reserve.

The larger of two guesses, so a reservation errs on the side of the money: the price list's cost
(OpenRouter's per-token prices, GET /models) of the prompt as it will be sent plus an answer of the
full `max_tokens`, and what the model's recent answers cost on average (which covers what the price
list cannot see: attachments, tool rounds, a fallback model). Neither known (a model without a price
and without answers yet, the catalogue unreachable): 0, and the caps hold as before reservations,
counting what was spent.
"""
from __future__ import annotations

import logging

from chatbot.ai import AIAdapterFactory
from chatbot.context import ConversationManager
from chatbot.errors import AIError
from chatbot.models import Message
from chatbot.stages.base import Turn

log = logging.getLogger(__name__)

# Generous: English runs near 4 characters a token, other scripts fewer.
CHARS_PER_TOKEN = 3
# What a provider counts for each message besides its text (role, separators).
TOKENS_PER_MESSAGE = 4
# The recent answers a model's average is taken over.
AVERAGE_OVER = 20


class CostEstimator:
    """Estimates, in USD, what answering a turn's message will cost."""

    def __init__(self, ai_factory: AIAdapterFactory, context: ConversationManager):
        self.ai_factory = ai_factory
        self.context = context

    def __call__(self, turn: Turn) -> float:
        try:
            adapter = self.ai_factory.current(turn.assistant.ai_configuration_id)
        except AIError as error:
            # The answer meets the same error and is an apology: nothing will be spent on it.
            log.warning("message_id=%s no cost estimate: %s", turn.question.id, error)
            return 0.0
        settings = adapter.settings
        listed = None
        prices = self.ai_factory.catalogue.prices(adapter, settings.model)
        if prices is not None:
            prompt_price, completion_price = prices
            listed = (self._prompt_tokens(turn, settings.system_prompt) * prompt_price
                      + settings.max_tokens * completion_price)
        average = Message.average_cost(settings.model, AVERAGE_OVER)
        return max(listed or 0.0, average or 0.0)

    def _prompt_tokens(self, turn: Turn, system_prompt: str) -> int:
        """Count, generously, the tokens of the prompt the message will be sent with."""
        history = self.context.get_history(turn.conversation, before_message_id=turn.question.id)
        texts = [system_prompt, *(str(message["content"]) for message in history), turn.question.content]
        return sum(len(text) // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE for text in texts)
