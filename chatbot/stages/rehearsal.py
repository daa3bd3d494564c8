"""The gates only an operator's try of the assistant has (the playground, `flask chat`): its messages
meet the customers' commands gates, so /help, STOP and /reset answer there exactly as on WhatsApp,
but nothing an operator types may act on a real customer or call the team.

- The playground's test user (`playground:<username>`) and the console's (`console:NAME`) are no
  one's phone: their STOP, START and /forget act on that test user alone, as a customer's would.
- `flask chat --phone whatsapp:+…` speaks in a real customer's conversation. There STOP, START and
  /forget (and the YES that would confirm one the customer asked for) would silence them on
  WhatsApp or erase what they wrote: they are answered with why not, and carried out never.
- /human answers with what the customer would be told, and calls nobody.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from chatbot.models import Status
from chatbot.redact import mask_phone
from chatbot.stages.base import Stage, Turn, Verdict
from chatbot.stages.commands import UserCommands
from chatbot.stages.words import CommandWords, carried_out

# The commands that change what a customer gets on WhatsApp, or erase what they wrote.
CUSTOMERS_OWN = ("stop", "start", "forget")


def is_customer(address: str) -> bool:
    """Whether `address` is a WhatsApp customer's, not a playground's or the console's test user."""
    return address.startswith("whatsapp:")


class CustomersOwnCommands(Stage):
    """Keeps an operator speaking in a real customer's conversation from opting them out or in, or
    erasing their history: placed before the opt-out gate."""

    def __init__(self, words: CommandWords, commands: UserCommands):
        self.words = words
        self.commands = commands

    def verdict(self, turn: Turn) -> Verdict | None:
        sender = turn.conversation.user_phone
        if not is_customer(sender) or not self._customers_own(sender, turn.question.content):
            return None
        word = turn.question.content.strip()
        return Verdict(status=Status.ANSWERED, kind="rehearsal",
                       reply=(f"({word} is not carried out here: this chat speaks as {mask_phone(sender)}, a real "
                              "WhatsApp customer, and it would change what they get or erase what they wrote. "
                              "Try it as a test user: flask chat --phone console:NAME, or the admin's playground.)"),
                       note={"rehearsal": "a customer's own command, not carried out by an operator"})

    def _customers_own(self, sender: str, text: str) -> bool:
        command = self.words.command_in(text)
        return command in CUSTOMERS_OWN or (command == "confirm" and self.commands.forget_pending(sender))


class HandoffPreview(Stage):
    """Answers /human with the words a customer gets while a person is called, calling nobody."""

    def __init__(self, words: CommandWords, holding_message: Callable[[], str]):
        self.words = words
        self.holding_message = holding_message

    def claims(self, question) -> bool:
        return self.words.command_in(question.content) == "human"

    def verdict(self, turn: Turn) -> Verdict | None:
        if not self.claims(turn.question):
            return None
        return replace(carried_out("human", self.holding_message()),
                       note={"rehearsal": "nobody is called from the playground or the console"})
