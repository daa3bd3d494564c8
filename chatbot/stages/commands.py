"""The commands gate: what a WhatsApp user can ask of the bot itself, answered without the AI:
start over, help, stop, start again, and erase everything stored about them."""
from __future__ import annotations

import logging

from redis import Redis

from chatbot.context import ConversationManager
from chatbot.errors import WhatsAppError
from chatbot.jobs.queueing import forget_sender_limit
from chatbot.models import Conversation, Message, OptOut, Status
from chatbot.rate_limiter import PREFIX as RATE_LIMIT_PREFIX
from chatbot.redact import sender_key
from chatbot.stages.base import Stage, Turn, Verdict

log = logging.getLogger(__name__)

# How long a /forget waits for its confirmation.
FORGET_WINDOW = 300
FORGET_PREFIX = "chatbot:forget:"


class UserCommands(Stage):
    """Recognises a whole message as a command (any case) and carries it out."""

    def __init__(self, redis: Redis, context: ConversationManager, whatsapp, words: dict[str, str],
                 site_name: str = "WhatsApp AI Assistant"):
        self.redis = redis
        self.context = context
        self.whatsapp = whatsapp
        self.words = words
        self.site_name = site_name
        self._by_word = {word.casefold(): command for command, word in words.items()}

    def claims(self, question: Message) -> bool:
        """Whether the message is, as a whole, one of the command words (whatever it would do now)."""
        return self._command_in(question.content) is not None

    def _command_in(self, text: str) -> str | None:
        return self._by_word.get(text.strip().casefold())

    def verdict(self, turn: Turn) -> Verdict | None:
        """Carry out the message if it is a command; silence it if its sender opted out."""
        conversation, question = turn.conversation, turn.question
        sender = conversation.user_phone
        command = self._command_in(question.content)
        if command == "start":
            OptOut.delete().where(OptOut.user_phone == sender).execute()
            return self._did("start", f"Welcome back! I'll answer your messages again. {self._list()}")
        if OptOut.select().where(OptOut.user_phone == sender).exists():
            return Verdict(status=Status.OPTED_OUT)
        forget_key = FORGET_PREFIX + sender_key(sender)
        if command == "confirm" and self.redis.get(forget_key):
            self._erase(sender, conversation.number)
            return Verdict(status=Status.ANSWERED, erased=True)
        if command not in (None, "confirm"):
            # Any other command drops a pending /forget: a YES later must not erase by surprise.
            self.redis.delete(forget_key)
        if command == "stop":
            OptOut.insert(user_phone=sender).on_conflict_ignore().execute()
            return self._did("stop", f"You won't get any more answers from me. Send {self.words['start']} to "
                                     "start again.")
        if command == "reset":
            Conversation.end([conversation.id], self.context)
            return self._did("reset", "Starting over: I've forgotten our conversation so far.")
        if command == "help":
            return self._did("help", f"I'm {self.site_name}, an AI assistant: write me anything and I'll answer. "
                                     f"{self._list()}")
        if command == "forget":
            self.redis.set(forget_key, 1, ex=FORGET_WINDOW)
            return self._did("forget", "This erases everything stored about you: our conversations and your "
                                       f"messages. Reply {self.words['confirm']} within 5 minutes to confirm.")
        return None

    def _did(self, command: str, reply: str) -> Verdict:
        log.info("user command=%s", command)
        return Verdict(status=Status.ANSWERED, reply=reply, kind=f"command:{command}")

    def _list(self) -> str:
        words = self.words
        return (f"Commands: {words['reset']} starts over, {words['help']} shows this, {words['stop']} stops my "
                f"answers ({words['start']} resumes), {words['forget']} erases what I stored about you.")

    def _erase(self, sender: str, number: str) -> None:
        """Delete the sender's conversations, messages, context windows, webhook-log rows and rate-limit
        counters; then say so, without storing the confirmation (nothing of theirs may remain)."""
        of_sender = Conversation.select(Conversation.id).where(Conversation.user_phone == sender)
        conversations = [row.id for row in of_sender]
        messages, log_rows = Conversation.delete_with_history(conversations, self.context)
        who = sender_key(sender)
        self.redis.delete(*self.redis.scan_iter(f"{RATE_LIMIT_PREFIX}{who}:*"), FORGET_PREFIX + who)
        forget_sender_limit(self.redis, sender)
        log.info("user command=forget erased conversations=%d messages=%d webhook_log_rows=%d",
                 len(conversations), messages, log_rows)
        try:
            # From the number they wrote to (a conversation's number key is its address, "" the default).
            self.whatsapp.send(sender, "Done: everything I stored about you is erased.", from_number=number)
        except WhatsAppError as error:
            log.warning("user command=forget confirmation not sent: %s", error)
