"""The words users write for the commands the bot answers itself (USER_COMMANDS), shared by the
opt-out gate (STOP, START) and the commands gate (the rest)."""
from __future__ import annotations

import logging

from chatbot.models import Status
from chatbot.stages.base import Verdict

log = logging.getLogger(__name__)


class CommandWords:
    """Recognises a whole message as one of the command words (any case, surrounding spaces ignored)."""

    def __init__(self, words: dict[str, str]):
        self.words = words
        self._by_word = {word.casefold(): command for command, word in words.items()}

    def __getitem__(self, command: str) -> str:
        return self.words[command]

    def command_in(self, text: str) -> str | None:
        """Return the command `text` is, as a whole, or None."""
        return self._by_word.get(text.strip().casefold())

    def listing(self) -> str:
        """Say what each command does, for /help and the welcome back."""
        words = self.words
        return (f"Commands: {words['reset']} starts over, {words['help']} shows this, {words['human']} calls a person "
                f"from our team, {words['stop']} stops my answers ({words['start']} resumes), {words['forget']} erases "
                "what I stored about you.")


def carried_out(command: str, reply: str, restarted: bool = False) -> Verdict:
    """The verdict on a command the bot carried out: the message is answered with `reply`."""
    log.info("user command=%s", command)
    return Verdict(status=Status.ANSWERED, reply=reply, kind=f"command:{command}", restarted=restarted)
