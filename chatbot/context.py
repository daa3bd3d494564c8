"""ConversationManager: each conversation's recent exchanges as a Redis sorted set."""
from __future__ import annotations

import json

from redis import Redis

from chatbot.models import Conversation, Message

KEY_PREFIX = "chatbot:context:"


class ConversationManager:
    """A window of the last messages per conversation, rebuilt from the DB when lost.

    The window moves in steps: when it would pass `max_messages`, its older half goes at once, and
    its start then stays put until it is full again. A window that slid by one message each turn
    would change the prompt's prefix every turn; this one keeps it byte-identical for half a
    window's turns, which is what a provider's prompt cache serves (only an identical prefix is).
    """

    def __init__(self, redis: Redis, max_messages: int, ttl: int):
        self.redis = redis
        self.max_messages = max_messages
        self.ttl = ttl

    @staticmethod
    def key(conversation_id) -> str:
        return f"{KEY_PREFIX}{conversation_id}"

    @staticmethod
    def start_key(conversation_id) -> str:
        """Where the window starts (a position): it moves only when the window is full."""
        return f"{KEY_PREFIX}{conversation_id}:start"

    def get_history(self, conversation: Conversation, before_message_id: int | None = None) -> list[dict]:
        """Return the window as chat messages, oldest first, limited to those before a message."""
        key = self.key(conversation.id)
        if not self.redis.exists(key) and conversation.is_active:
            self._rebuild(conversation)
        upper = f"({before_message_id}" if before_message_id is not None else "+inf"
        start = self.redis.get(self.start_key(conversation.id))
        members = [(json.loads(member), position) for member, position in
                   self.redis.zrangebyscore(key, start.decode() if start else "-inf", upper, withscores=True)]
        roles = [item["role"] for item, _ in members]
        if window_start(roles, self.max_messages):
            members = members[window_start(roles, self.max_messages - self.max_messages // 2):]
            self.redis.set(self.start_key(conversation.id), repr(members[0][1]), ex=self.ttl)
        return [{"role": item["role"], "content": item["content"]} for item, _ in members]

    def add_message(self, conversation_id, role: str, content: str, position: float, message_id: int) -> None:
        """Add one message at `position` (its place in the conversation), trim, and renew the TTL."""
        self.add_messages(conversation_id, [(role, content, position, message_id)])

    def add_messages(self, conversation_id, items: list[tuple[str, str, float, int]]) -> None:
        """Add several messages in one round trip."""
        if not items:
            return
        key = self.key(conversation_id)
        entries = {
            json.dumps({"id": message_id, "role": role, "content": content}, ensure_ascii=False): position
            for role, content, position, message_id in items
        }
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, entries)
            # Twice the window, and the knowledge given with its questions: the messages since its
            # start are all still here when it moves.
            pipe.zremrangebyrank(key, 0, -(3 * self.max_messages + 1))
            pipe.expire(key, self.ttl)
            pipe.expire(self.start_key(conversation_id), self.ttl)
            pipe.execute()

    def add_exchange(self, conversation_id, question: Message | None, answer: Message) -> None:
        """Add a user message and the assistant's answer to it, in that order (or an answer to no
        message, such as an operator's follow-up, alone)."""
        self.add_messages(conversation_id, exchange_entries(question, answer))

    def add_questions(self, conversation_id, questions: list[Message]) -> None:
        """Add user messages, each at its own place (the answer to them is added on its own)."""
        self.add_messages(conversation_id, question_entries(questions))

    def clear_history(self, conversation_id) -> None:
        """Forget the window (the DB keeps the messages)."""
        self.redis.delete(self.key(conversation_id), self.start_key(conversation_id))

    def _rebuild(self, conversation: Conversation) -> None:
        self.redis.delete(self.start_key(conversation.id))
        entries = []
        for questions, answer in Message.answered_exchanges(conversation, limit=self.max_messages):
            entries += question_entries(questions[:-1]) + exchange_entries(questions[-1], answer)
        entries.sort(key=lambda entry: entry[2])
        # A full window, not an overflowing one: that would drop its older half at the first read.
        self.add_messages(conversation.id, entries[window_start([entry[0] for entry in entries], self.max_messages):])


def window_start(roles: list[str], size: int) -> int:
    """Return where a window of the last `size` messages starts among entries with these roles. The
    knowledge given with a question ("system", right before it) rides with it: it is not one of the
    window's messages, and it stays or goes with its question."""
    counted = [index for index, role in enumerate(roles) if role != "system"]
    if len(counted) <= size:
        return 0
    start = counted[-size] if size else len(roles)
    while start > 0 and roles[start - 1] == "system":
        start -= 1
    return start


def remembered_text(question: Message) -> str:
    """Return what later turns keep of a user message: its voice note's transcript, a short stand-in
    for its photo or document (never the bytes), else its text."""
    return question.metadata.get("transcript") or question.metadata.get("stand_in") or question.content


def question_entries(questions: list[Message]) -> list[tuple[str, str, float, int]]:
    """Place each user message where it was written."""
    return [("user", remembered_text(question), float(question.id), question.id) for question in questions]


def exchange_entries(question: Message | None, answer: Message) -> list[tuple[str, str, float, int]]:
    """Place an answer right after its question, even when later questions arrived meanwhile; an
    answer to no question goes where it was written."""
    if question is None:
        return [("assistant", answer.content, float(answer.id), answer.id)]
    return [*sources_entries(answer), *question_entries([question]),
            ("assistant", answer.content, question.id + 0.5, answer.id)]


def sources_entries(answer: Message) -> list[tuple[str, str, float, int]]:
    """Place the knowledge an answer was given right before the first message it answers, as the
    model read it: the next request then begins with the whole of this one."""
    given = (answer.metadata.get("knowledge") or {}).get("message")
    if not given:
        return []
    first = min(answer.metadata.get("answers") or [answer.reply_to_id])
    return [("system", given, first - 0.5, answer.id)]
