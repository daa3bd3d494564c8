"""The commands gate: what a WhatsApp user can ask of the bot itself, answered without the AI: start
over, help, and erase everything stored about them (STOP and START are the opt-out gate's)."""
from __future__ import annotations

import logging

from redis import Redis

from chatbot.context import ConversationManager
from chatbot.errors import WhatsAppError
from chatbot.jobs.queueing import forget_sender_limit
from chatbot.models import CampaignRecipient, Conversation, Message, Status
from chatbot.rate_limiter import PREFIX as RATE_LIMIT_PREFIX
from chatbot.redact import sender_key
from chatbot.stages.base import Stage, Turn, Verdict
from chatbot.stages.optouts import OPT_OUT_COMMANDS
from chatbot.stages.words import CommandWords, carried_out

log = logging.getLogger(__name__)

# How long a /forget waits for its confirmation.
FORGET_WINDOW = 300
FORGET_PREFIX = "chatbot:forget:"


class UserCommands(Stage):
    """Recognises a whole message as a command (any case) and carries it out."""

    def __init__(self, redis: Redis, context: ConversationManager, whatsapp, words: CommandWords,
                 site_name: str = "WhatsApp AI Assistant"):
        self.redis = redis
        self.context = context
        self.whatsapp = whatsapp
        self.words = words
        self.site_name = site_name

    def claims(self, question: Message) -> bool:
        """Whether the message is, as a whole, one of this gate's command words (whatever it would do now)."""
        return self.words.command_in(question.content) not in (None, *OPT_OUT_COMMANDS)

    def verdict(self, turn: Turn) -> Verdict | None:
        """Carry out the message if it is a command."""
        conversation, question = turn.conversation, turn.question
        sender = conversation.user_phone
        command = self.words.command_in(question.content)
        if command == "confirm" and self._confirms_forget(sender, question):
            self._erase(sender, conversation.number, question.id)
            return Verdict(status=Status.ANSWERED, erased=True, restarted=True)
        if command == "reset":
            Conversation.end_with([conversation], question.id, self.context)
            return carried_out("reset", "Starting over: I've forgotten our conversation so far.", restarted=True)
        if command == "help":
            return carried_out("help", f"I'm {self.site_name}, an AI assistant: write me anything and I'll answer. "
                                       f"{self.words.listing()}")
        if command == "forget":
            self.redis.set(FORGET_PREFIX + sender_key(sender), question.id, ex=FORGET_WINDOW)
            return carried_out("forget", "This erases everything stored about you: our conversations and your "
                                         f"messages. Reply {self.words['confirm']} within 5 minutes to confirm.")
        return None

    def forget_pending(self, sender: str) -> bool:
        """Whether `sender` asked to be forgotten in the last five minutes and a YES would confirm it."""
        return self.redis.exists(FORGET_PREFIX + sender_key(sender)) > 0

    def _confirms_forget(self, sender: str, question: Message) -> bool:
        """Whether `question` (a YES) answers a /forget of the last five minutes directly: any other
        message in between, whatever became of it, cancelled that /forget."""
        pending = self.redis.get(FORGET_PREFIX + sender_key(sender))
        return pending is not None and not Message.written_between(sender, int(pending), question.id)

    def _erase(self, sender: str, number: str, confirmation_id: int) -> None:
        """Delete the sender's conversations, messages, context windows, webhook-log rows, campaign
        recipient rows and rate-limit counters, up to the confirmation; then say so, without storing the
        confirmation (nothing of theirs may remain). Messages written after it are kept: they start afresh."""
        conversations = list(Conversation.select().where(Conversation.user_phone == sender))
        Conversation.end_with(conversations, confirmation_id, self.context)
        messages, log_rows = Conversation.delete_with_history([row.id for row in conversations], self.context)
        CampaignRecipient.forget(sender)
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
