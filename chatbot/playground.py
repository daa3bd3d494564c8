"""The admin's playground: an operator chats with the bot as a test user, through the real processor,
context window and AI adapter, with any stored AI configuration. Nothing goes to WhatsApp."""
from __future__ import annotations

from chatbot.ai import AIAdapter, AIAdapterFactory
from chatbot.jobs.locks import conversation_lock
from chatbot.models import AIConfiguration, Conversation, Message, OptOut, Origin, Role, Status
from chatbot.models.db import database
from chatbot.processor import MessageProcessor
from chatbot.sanitizer import clean_text
from chatbot.stages.approved import ApprovedAnswers

PLAYGROUND_PREFIX = "playground:"


class ChosenConfiguration:
    """Stands in for AIAdapterFactory in the playground: every answer uses the configuration the
    operator chose (None: the environment's settings), active or not."""

    def __init__(self, factory: AIAdapterFactory, configuration: AIConfiguration | None):
        self.factory = factory
        self.configuration = configuration
        # What each model takes (tools among it), shared with the factory's answers.
        self.catalogue = factory.catalogue

    def current(self, configuration_id: int | None = None) -> AIAdapter:
        """The chosen configuration's adapter, whichever configuration the number would use."""
        if self.configuration is None:
            return self.factory.adapter(self.factory.environment_settings())
        return self.factory.adapter(self.factory.settings_for(self.configuration))


class NothingSent:
    """Stands in for WhatsAppClient in the playground: the reply is read from the transcript, and no
    part is reported sent, so none enters the delivery records (ReplyPart) the dashboard counts."""

    def send(self, to: str, body: str, **progress) -> list[str]:
        return []


def playground_address(username: str) -> str:
    """The pseudo-address of an operator's test user: one playground conversation per admin."""
    return f"{PLAYGROUND_PREFIX}{username}"


def current_conversation(username: str) -> Conversation | None:
    """Return the operator's playground conversation, if one is going."""
    return Conversation.get_or_none(Conversation.user_phone == playground_address(username),
                                    Conversation.is_active == True)  # noqa: E712


def ask(services, username: str, text: str, configuration: AIConfiguration | None) -> None:
    """Store `text` as the operator's test user's message and answer it now with `configuration`
    (None: the environment's settings), within the AI deadline."""
    config = services.config
    body = clean_text(text, config.max_inbound_chars)
    with database.atomic():
        conversation_id = Conversation.resume_or_start_id(playground_address(username), "",
                                                          config.conversation_ttl)
        message_id = Message.insert(
            conversation=conversation_id,
            role=Role.USER.value,
            content=body.text,
            status=Status.PENDING.value,
            metadata={"trimmed": True} if body.trimmed else {},
            origin=Origin.PLAYGROUND.value,
        ).execute()
    chosen = ChosenConfiguration(services.ai_factory, configuration)
    processor = MessageProcessor(chosen,
                                 services.operator_channel(Origin.PLAYGROUND, NothingSent(),
                                                           ApprovedAnswers(services.retriever, chosen)),
                                 services.context, services.errors, max_inbound_chars=config.max_inbound_chars,
                                 retriever=services.retriever,
                                 # The operator's tools are tried here too; follow-ups and handoffs are not.
                                 toolbox=services.processor.toolbox)
    # The same lock as the jobs: two tabs of one operator must not answer the same message twice.
    with conversation_lock(services.redis, conversation_id, message_id, ttl=config.conversation_lock_ttl):
        # No job deadline here: the adapter's own (AI_DEADLINE) ends the model call, retries included.
        processor.process(message_id, final_attempt=True)


def reset(username: str, context) -> None:
    """End the operator's playground conversation, context and all, and lift a STOP its test user
    wrote: the next message starts afresh, as a new customer's would."""
    conversation = current_conversation(username)
    if conversation is not None:
        Conversation.end([conversation.id], context)
    OptOut.start(playground_address(username), "")
