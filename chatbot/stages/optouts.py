"""The opt-out gate: STOP and START, which work for every sender whatever else holds their messages
back (the law requires both), and the silence of a sender who wrote STOP.

WhatsApp opt-outs are per business number: STOP written to one of the numbers silences that number
only, and START written to it answers there again.
"""
from __future__ import annotations

from chatbot.models import FollowUp, Message, OptOut, Status
from chatbot.stages.base import Stage, Turn, Verdict
from chatbot.stages.words import CommandWords, carried_out

OPT_OUT_COMMANDS = ("stop", "start")


class OptOuts(Stage):
    """Carries out STOP and START, and stops every other message of a sender who opted out of the number."""

    def __init__(self, words: CommandWords):
        self.words = words

    def claims(self, question: Message) -> bool:
        return self.words.command_in(question.content) in OPT_OUT_COMMANDS

    def verdict(self, turn: Turn) -> Verdict | None:
        sender, number = turn.conversation.user_phone, turn.conversation.number
        command = self.words.command_in(turn.question.content)
        if command == "start":
            OptOut.start(sender, number)
            return carried_out("start", f"Welcome back! I'll answer your messages again. {self.words.listing()}")
        if OptOut.applies(sender, number):
            return Verdict(status=Status.OPTED_OUT)
        if command == "stop":
            OptOut.stop(sender, number)
            # Nothing promised for later goes out either.
            FollowUp.cancel_for_sender(sender, number, by="STOP")
            return carried_out("stop", f"You won't get any more answers from me. Send {self.words['start']} to "
                                       "start again.")
        return None
