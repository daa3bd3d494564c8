"""MessageProcessor: answer a stored user message and deliver the answer, exactly once."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime

from chatbot import metrics
from chatbot.ai import AIAdapterFactory, OpenRouterAdapter
from chatbot.alerts import ErrorHandler
from chatbot.channels import Channel
from chatbot.context import ConversationManager, remembered_text
from chatbot.errors import AIError, Category, JobDeadlineReached, WhatsAppError
from chatbot.handoff import REQUEST_HUMAN_NAME, Handoffs
from chatbot.knowledge.prompt import fresh_passages, given, says_not_covered, sources_message, with_citation
from chatbot.knowledge.retrieval import Retrieval, Retriever
from chatbot.media import AUDIO_FORMATS, Media, MediaError, MediaKind, MediaTooLarge, media_kind, megabytes
from chatbot.models import (
    Conversation,
    GapReason,
    HandoffReason,
    KnowledgeGap,
    Message,
    OptOut,
    ReplyPart,
    Role,
    ServiceWindow,
    Status,
    utcnow,
)
from chatbot.models.db import connection_released, database
from chatbot.numbers import Assistant
from chatbot.redact import mask_phone, mask_phones_in
from chatbot.sanitizer import TRIMMED_NOTE, clean_text
from chatbot.stages.base import Turn, Verdict
from chatbot.stages.deadline import MIN_AI_SECONDS
from chatbot.tools.loop import Toolbox
from chatbot.whatsapp import WINDOW_CLOSED_CODE
from chatbot.whatsapp_format import to_whatsapp

log = logging.getLogger(__name__)

# A sender who never pauses for COALESCE_SECONDS is answered after this many of them all the same.
BURST_WAITS = 3

# What the user is told when an attachment cannot be understood: one kind sentence, never silence.
VOICE_UNHEARD = "I couldn't hear that voice note — could you type it?"
PHOTOS_UNSEEN = "I can't look at photos with the current setup — could you describe it in words?"
MEDIA_UNREADABLE = "I couldn't open that file — could you send it again, or type your question?"
MEDIA_UNSUPPORTED = ("I can read text, voice notes, photos and PDF documents, but not this kind of file — "
                     "could you type your question instead?")
# Attachments past MAX_MEDIA_BYTES (each) or MAX_MEDIA_BYTES_PER_MESSAGE (together) are skipped, and named.
MEDIA_TOO_LARGE = ("{files} too big for me: a message's files may add up to {total} MB, each at most {each} MB. "
                   "Could you send a smaller one, or type your question?")
MEDIA_SKIPPED_NOTE = "(I skipped {files}: too big. A message's files may add up to {total} MB, each at most {each} MB.)"
LOCATION_UNSUPPORTED = "I can't see shared locations — could you type the place or address instead?"
# Canned answers that never carry the number's greeting: a command's reply, a cap's or the access list's
# refusal, the thanks for a rating.
NOT_GREETED = ("command:", "budget_", "access", "rating")
# Named to the operator when the model cannot see photos.
VISION_MODEL_HINTS = 3


class GaveUp(Exception):
    """A message's jobs failed for good: the user gets the apology, the operator this alert."""


@dataclass
class Outcome:
    """What one run of the processor did."""

    answered: int = 0
    failed: int = 0
    parts_sent: int = 0


@dataclass
class UserTurn:
    """What the model reads for a user message, and what reading its attachments cost."""

    content: str | list[dict]
    # USD spent turning the attachments into text (a transcription); None when a provider did not say.
    media_cost: float | None = 0.0


class MessageProcessor:
    """Turns a stored user message into a stored, delivered assistant reply."""

    def __init__(
        self,
        ai_factory: AIAdapterFactory,
        channel: Channel,
        context: ConversationManager,
        errors: ErrorHandler,
        clock: Callable[[], float] = time.monotonic,
        max_inbound_chars: int = 4096,
        transcription_model: str = "openai/whisper-1",
        retriever: Retriever | None = None,
        handoffs: Handoffs | None = None,
        toolbox: Toolbox | None = None,
    ):
        self.ai_factory = ai_factory
        self.channel = channel
        self.context = context
        self.clock = clock
        self.errors = errors
        self.max_inbound_chars = max_inbound_chars
        self.transcription_model = transcription_model
        # Finds the business's knowledge for each question; None answers from the system prompt alone.
        self.retriever = retriever
        # Calls a person when the model asks for one or answers keep failing; None never does.
        self.handoffs = handoffs
        # Offers the model its tools and runs what it calls; without one, only the built-in tools.
        self.toolbox = toolbox or Toolbox()

    def process(self, message_id: int, final_attempt: bool = True, until: float | None = None,
                coalesce_seconds: int = 0) -> Outcome:
        """Answer and deliver every outstanding message of this sender up to `message_id`, in order.

        Transient failures raise (so the job runs again) unless this is the final attempt, when the
        user gets the fallback reply instead of silence. `until` (a `clock()` time) is the job's
        deadline: no AI call outlasts it, and no new one starts once it has passed. With
        `coalesce_seconds`, it first waits for the sender to pause that long, then answers each run
        of plain messages (a burst, newer ones than `message_id` included) with one AI call and one reply.
        """
        outcome = Outcome()
        message = Message.get_or_none(Message.id == message_id)
        if message is None:
            log.warning("message_id=%s not found; nothing to do", message_id)
            return outcome
        conversation = message.conversation
        up_to = message.id
        if coalesce_seconds:
            up_to = self._wait_for_pause(conversation, message.id, coalesce_seconds, until)
        outstanding = list(Message.outstanding(conversation, up_to))
        answered_in_burst = set()
        while outstanding:
            question = outstanding.pop(0)
            if question.id in answered_in_burst:
                continue
            answer = question.current_answer()
            turn = Turn(conversation, question, self.assistant_of(conversation), until)
            verdict = None if answer is not None else self._first_verdict(turn)
            if verdict is not None and verdict.later:
                raise JobDeadlineReached(f"message_id={question.id} left for the next run of the job")
            if verdict is not None and not verdict.erased:
                answer = self._settle(conversation, question, verdict)
            elif verdict is None and answer is None:
                burst = self._burst([question, *outstanding]) if coalesce_seconds else [question]
                answered_in_burst.update(member.id for member in burst)
                try:
                    # Attachments read for the answer stay held until _answer's frame (and its prompt) is gone.
                    with ExitStack() as attachments:
                        answer = self._answer(conversation, burst, final_attempt, outcome, attachments, until)
                finally:
                    self._close_gates(turn, answer)
                question = burst[-1]  # the one the answer replies to
            if answer is not None:  # else stopped in silence, or erased
                self._remember_answered(conversation, answer)
                outcome.parts_sent += self._deliver(conversation, question, answer, final_attempt)
            if verdict is not None and verdict.restarted and outstanding:
                # The rest moved to the sender's next conversation: answered there, from a fresh context.
                outstanding = list(Message.select().where(Message.id.in_([later.id for later in outstanding]))
                                   .order_by(Message.id))
                conversation = outstanding[0].conversation if outstanding else conversation
        return outcome

    def _first_verdict(self, turn: Turn) -> Verdict | None:
        """Ask the channel's gates in order; return the first that stops the message, or None."""
        for stage in self.channel.stages:
            verdict = stage.verdict(turn)
            if verdict is not None:
                # What the gates before it held for the message (a budget's reservation) is let go.
                self._close_gates(turn, None)
                return verdict
        return None

    def _close_gates(self, turn: Turn, answer: Message | None) -> None:
        """Tell every gate what became of a message they let through: `answer`, the AI's answer, or
        None (or a canned reply) when it never got one."""
        cost = answer.cost if answer is not None and answer.model is not None else None
        for stage in self.channel.stages:
            stage.settle(turn, cost)

    def _settle(self, conversation: Conversation, question: Message, verdict: Verdict) -> Message | None:
        """Leave `question` where a gate stopped it; return the canned reply stored as its answer, if any."""
        if verdict.refused:
            metrics.count_refusal(verdict.refused)
        if verdict.note:
            question.metadata = {**question.metadata, **verdict.note}
        if verdict.reply:
            return self._store_canned(conversation, question, verdict.reply, verdict.kind, status=verdict.status,
                                      answer_metadata=verdict.note if verdict.answer else None,
                                      cost=verdict.cost, model=verdict.model)
        Message.update(status=verdict.status.value, metadata=question.metadata).where(
            Message.id == question.id).execute()
        return None

    def _wait_for_pause(self, conversation: Conversation, message_id: int, quiet_seconds: int,
                        until: float | None) -> int:
        """Wait until the conversation's newest unanswered message is `quiet_seconds` old (at most
        BURST_WAITS windows, and never into the time the answer needs); return the newest one's id."""
        give_up_at = self.clock() + BURST_WAITS * quiet_seconds
        if until is not None:
            give_up_at = min(give_up_at, until - MIN_AI_SECONDS)
        while True:
            newest = Message.newest_pending(conversation)
            if newest is None:
                return message_id
            left = min(quiet_seconds - (utcnow() - newest.created_at).total_seconds(), give_up_at - self.clock())
            if left <= 0:
                return max(message_id, newest.id)
            # The conversation lock stays held (the sender's later jobs wait), the database connection not.
            with connection_released():
                time.sleep(left)

    def _burst(self, questions: list[Message]) -> list[Message]:
        """Return the first of `questions` with the plain ones right after it: what one answer answers.
        A command, an attachment or a location ends a burst and is handled on its own."""
        burst = questions[:1]
        if self._plain(burst[0]):
            for question in questions[1:]:
                if question.status != Status.PENDING.value or not self._plain(question):
                    break
                burst.append(question)
        return burst

    def _plain(self, question: Message) -> bool:
        """Whether `question` is only text the model reads as written (no command, attachment or location)."""
        if question.metadata.get("media") or question.metadata.get("Latitude"):
            return False
        return not any(stage.claims(question) for stage in self.channel.stages)

    def _remember_answered(self, conversation: Conversation, answer: Message) -> None:
        """Put the user messages one reply answers (a burst's, an operator's) in the context window;
        _deliver adds the reply itself, right after the last of them."""
        answered = answer.metadata.get("answers", [])
        if answered and answer.status == Status.UNSENT.value and not answer.metadata.get("canned"):
            self.context.add_questions(conversation.id,
                                       list(Message.select().where(Message.id.in_(answered)).order_by(Message.id)))

    def give_up(self, message_id: int, reason: str) -> Outcome:
        """Apologise for every unanswered message of this sender up to `message_id`: the job that
        should have answered them failed for good. An answer still waiting to be sent holds back
        the messages after it (replies keep their order); the sweeper sends it and queues them."""
        outcome = Outcome()
        message = Message.get_or_none(Message.id == message_id)
        if message is None:
            return outcome
        conversation = message.conversation
        for question in Message.outstanding(conversation, message.id):
            if question.current_answer() is not None:
                break
            if not outcome.failed:
                self.errors.handle(Category.SYSTEM, GaveUp(reason),
                                   f"message_id={question.id} sender={mask_phone(conversation.user_phone)}")
            apology = self._apologise(conversation, question, reason, Category.SYSTEM)
            outcome.failed += 1
            try:
                outcome.parts_sent += self._deliver(conversation, question, apology, final_attempt=True)
            except WhatsAppError:
                # _deliver kept it unsent and alerted the operator; the sweeper sends it later.
                log.warning("message_id=%s apology kept for the sweeper", question.id)
        return outcome

    def deliver_operator_reply(self, message_id: int, final_attempt: bool = True) -> Outcome:
        """Send the conversation's unsent operator replies up to `message_id`, oldest first, each once;
        the user messages a reply answers enter the context window with it."""
        outcome = Outcome()
        reply = Message.get_or_none(Message.id == message_id)
        if reply is None:
            log.warning("message_id=%s not found; nothing to send", message_id)
            return outcome
        conversation = reply.conversation
        unsent_replies = (
            Message.select()
            .where(
                Message.conversation == conversation,
                Message.operator.is_null(False),
                Message.status == Status.UNSENT.value,
                Message.id <= message_id,
            )
            .order_by(Message.id)
        )
        for unsent in unsent_replies:
            self._remember_answered(conversation, unsent)
            outcome.parts_sent += self._deliver(conversation, unsent.reply_to, unsent, final_attempt)
        return outcome

    def deliver_unprompted(self, message_id: int, final_attempt: bool = True) -> Outcome:
        """Send a message the assistant wrote on its own (a due follow-up, the rating question) once:
        inside the 24-hour window as it is, past it as the number's approved template; a follow-up
        enters the conversation's context as the assistant's."""
        outcome = Outcome()
        message = Message.get_or_none(Message.id == message_id)
        if message is None or message.status != Status.UNSENT.value:
            return outcome
        conversation = message.conversation
        if OptOut.applies(conversation.user_phone, conversation.number):
            Message.update(status=Status.OPTED_OUT.value, error="the customer wrote STOP").where(
                Message.id == message_id).execute()
            return outcome
        outcome.parts_sent += self._deliver(conversation, None, message, final_attempt)
        return outcome

    def _answer(self, conversation: Conversation, burst: list[Message], final_attempt: bool,
                outcome: Outcome, attachments: ExitStack, until: float | None = None) -> Message:
        """Answer the messages of `burst` (usually one) with one AI call (one per round when the model
        calls tools); store the answer as the reply to the last of them, every one marked answered
        with it. The attachments read (their temporary files, their room in memory) are released
        when `attachments` is closed."""
        started = self.clock()
        first, question = burst[0], burst[-1]
        context = f"message_id={question.id} sender={mask_phone(conversation.user_phone)}"
        try:
            adapter = self.ai_factory.current(self.assistant_of(conversation).ai_configuration_id)
            if len(burst) > 1:
                # Plain messages only (see _burst): one user turn, each message on its own line.
                turn = UserTurn("\n".join(prompt_text(member) for member in burst))
            else:
                turn = self._read_attachments(conversation, question, adapter, final_attempt, until, attachments)
            if isinstance(turn, Message):
                return turn
            history = self.context.get_history(conversation, before_message_id=first.id)
            asked = "\n".join(remembered_text(member) for member in burst)
            found = self._knowledge(conversation, asked, history, adapter, final_attempt, until)
            fresh = fresh_passages(found.passages, history)
            sources = sources_message(found.passages, fresh)
            # Every round of tool calls, the tools' requests included, ends within AI_DEADLINE.
            ends = adapter.clock() + adapter.deadline
            until = ends if until is None else min(until, ends)
            offer = self.toolbox.offer(conversation, adapter, self._takes_tools(conversation, adapter),
                                       may_call_person=self.handoffs is not None and conversation.is_on_whatsapp)
            # The passages go last, next to the question: what comes before stays the same every turn.
            prompt = (
                [{"role": "system", "content": self.toolbox.system_prompt(adapter.settings.system_prompt, offer)}]
                + history
                + ([sources] if sources and found.best_score is not None else [])
                + [{"role": "user", "content": turn.content}]
                + self.toolbox.confirmation(conversation, question, asked, offer, until)
            )
            reply = self.toolbox.converse(adapter, prompt, offer, conversation, question, until)
        except AIError as error:
            metrics.count_ai_failure(error)
            if error.retryable and not final_attempt:
                raise
            self.errors.handle(Category.AI, error, context)
            outcome.failed += 1
            with database.atomic():
                # One apology for the whole burst; `flask retry-failed` puts every message of it back.
                Message.update(status=Status.FAILED.value, error=str(error)).where(
                    Message.id.in_([member.id for member in burst[:-1]])).execute()
                apology = self._apologise(conversation, question, str(error), Category.AI)
            return self._after_failures(conversation, question, apology)
        latency_ms = (self.clock() - started) * 1000
        metrics.record_ai_reply(reply, latency_ms / 1000)
        usage = reply.usage
        asked_for_person = next((call for call in reply.tool_calls if call.name == REQUEST_HUMAN_NAME), None)
        if asked_for_person is not None:
            return self._hand_to_person(conversation, burst, reply, asked_for_person.arguments, latency_ms,
                                        total_cost(usage.get("cost"), turn.media_cost, found.cost), outcome)
        text = to_whatsapp(clean_text(reply.text).text)
        if any(member.metadata.get("trimmed") for member in burst):
            text = TRIMMED_NOTE.format(limit=self.max_inbound_chars) + "\n\n" + text
        if question.metadata.get("media_skipped"):
            text = self._too_large(MEDIA_SKIPPED_NOTE, files_named(question.metadata["media_skipped"])) + "\n\n" + text
        if found.passages and adapter.settings.cite_sources:
            text = with_citation(text, found.passages)
        text = self._greeted(conversation, first, text)
        metadata = {"ai_source": adapter.settings.source, "requested_model": adapter.settings.model}
        if len(burst) > 1:
            metadata["answers"] = [member.id for member in burst]
        if found.best_score is not None:
            metadata["knowledge"] = {"best_score": found.best_score, "passages": given(found.passages)}
            if fresh:
                # Kept in the conversation's window before the question, as the model read it.
                metadata["knowledge"]["message"] = sources["content"]
        with database.atomic():
            answer = Message.create(
                conversation=conversation,
                role=Role.ASSISTANT.value,
                origin=self.channel.origin.value,
                content=text,
                status=Status.UNSENT.value,
                reply_to=question,
                model=reply.model,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
                total_tokens=usage.get("total_tokens"),
                latency_ms=latency_ms,
                # None when a provider reported no cost: an unknown cost is not a zero one.
                cost=total_cost(usage.get("cost"), turn.media_cost, found.cost),
                metadata=metadata,
            )
            if found.best_score is not None and self.retriever is not None:
                said_not_covered = says_not_covered(reply.text)
                gap = (GapReason.LOW_SCORE if not found.covered(self.retriever.min_score)
                       else GapReason.NOT_COVERED if said_not_covered else None)
                if gap is not None:
                    KnowledgeGap.create(message=question, number=conversation.number, question=asked[:4000],
                                        reason=gap.value, best_score=found.best_score)
                if said_not_covered:
                    # Counted towards HANDOFF_AFTER_FAILURES: the model said it could not answer (a low
                    # score alone is also "thanks" or "hello", which need no person).
                    answer.metadata = {**answer.metadata, "not_covered": True}
                    answer.save()
            for member in burst:
                # save(), not a status update: reading an attachment may have added a transcript.
                member.status = Status.ANSWERED.value
                member.save()
        conversation.touch()
        outcome.answered += len(burst)
        log.info("message_id=%s answered model=%s tokens=%s latency_ms=%.0f burst=%d",
                 question.id, reply.model, usage.get("total_tokens"), latency_ms, len(burst))
        return self._after_failures(conversation, question, answer)

    def _takes_tools(self, conversation: Conversation, adapter: OpenRouterAdapter) -> bool:
        """Whether the catalogue says the model takes tools; asked only when there is a tool to offer
        (a customer on WhatsApp may be handed to a person; the operator's tools anywhere)."""
        if not (self.toolbox.caller is not None or (self.handoffs is not None and conversation.is_on_whatsapp)):
            return False
        return self.ai_factory.catalogue.calls_tools(adapter, adapter.settings.model)

    def _hand_to_person(self, conversation: Conversation, burst: list[Message], reply, arguments: dict,
                        latency_ms: float, cost: float | None, outcome: Outcome) -> Message:
        """The model called request_human: call a person, and tell the customer so (the call was
        paid for: the holding message carries its model and cost)."""
        question = burst[-1]
        summary = str(arguments.get("summary") or "")[:2000]
        handoff = self.handoffs.call(conversation, question, Handoffs.reason_of(arguments), "model", summary)
        usage = reply.usage
        with database.atomic():
            answer = Message.create(
                conversation=conversation, role=Role.ASSISTANT.value, origin=self.channel.origin.value,
                content=self._greeted(conversation, burst[0], self.handoffs.holding_message()),
                status=Status.UNSENT.value, reply_to=question, model=reply.model,
                prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                total_tokens=usage.get("total_tokens"), latency_ms=latency_ms, cost=cost,
                metadata={"canned": "handoff", "handoff": handoff.id if handoff else None,
                          **({"answers": [member.id for member in burst]} if len(burst) > 1 else {})})
            # The customer's words wait for the person, as their next ones will.
            Message.update(status=Status.WAITING.value).where(
                Message.id.in_([member.id for member in burst])).execute()
        conversation.touch()
        outcome.answered += len(burst)
        log.info("message_id=%s handed to a person by the model reason=%s", question.id, arguments.get("reason"))
        return answer

    def _after_failures(self, conversation: Conversation, question: Message, answer: Message) -> Message:
        """After HANDOFF_AFTER_FAILURES failed or not-covered answers in a row, call a person; the
        answer (or apology) then ends with the holding message."""
        if self.handoffs is None or not conversation.is_on_whatsapp or not self.handoffs.due_after_failures(
                conversation):
            return answer
        handoff = self.handoffs.call(conversation, question, HandoffReason.REPEATED_FAILURE, "failures",
                                     f"{self.handoffs.config.handoff_after_failures} answers in a row failed or "
                                     "were not covered by the knowledge")
        if handoff is None:
            return answer
        answer.content = f"{answer.content}\n\n{self.handoffs.holding_message()}"
        answer.metadata = {**answer.metadata, "handoff": handoff.id}
        answer.save()
        return answer

    def _knowledge(self, conversation: Conversation, asked: str, history: list[dict], adapter: OpenRouterAdapter,
                   final_attempt: bool, until: float | None) -> Retrieval:
        """Find the passages for what was `asked`, read with the user's turn before it (so "and how
        much is it?" finds the price of what they asked about). When the embeddings cannot be had,
        the model answers without knowledge and the operator is told."""
        if self.retriever is None:
            return Retrieval()
        earlier = [item["content"] for item in history if item["role"] == "user"][-1:]
        try:
            return self.retriever.search(adapter, "\n".join([*earlier, asked]), conversation.number, until)
        except AIError as error:
            if error.retryable and not final_attempt and not error.deadline_exceeded:
                raise
            self.errors.send_admin_alert(
                f"knowledge:embeddings:{error.status}",
                f"knowledge not searched, answers go out without it: embeddings model "
                f"{self.retriever.embedding_model}: {error}")
            return Retrieval()

    def _read_attachments(self, conversation: Conversation, question: Message, adapter: OpenRouterAdapter,
                          final_attempt: bool, until: float | None, attachments: ExitStack) -> UserTurn | Message:
        """Turn the question's attachments into what the model reads (a transcript, image or file
        parts); when they cannot be read, store and return the kind canned answer instead.

        Each file streams to a temporary file; those past the message's budget are skipped (and named
        to the user). The rest are read back into memory only once the worker has room for them, and
        stay held in `attachments` until the answer is stored."""
        items = question.metadata.get("media", [])
        if not items:
            if question.metadata.get("Latitude") and not question.content.strip():
                return self._store_canned(conversation, question, LOCATION_UNSUPPORTED, "location")
            return UserTurn(prompt_text(question))
        kinds = [media_kind(item.get("content_type", "")) for item in items]
        media = self.channel.media
        if media is None or MediaKind.OTHER in kinds:
            return self._store_canned(conversation, question, MEDIA_UNSUPPORTED, "media_unsupported")
        context = f"message_id={question.id} sender={mask_phone(conversation.user_phone)}"
        if MediaKind.IMAGE in kinds and not self.ai_factory.catalogue.takes(adapter, adapter.settings.model, "image"):
            takers = ", ".join(self.ai_factory.catalogue.models_taking(adapter, "image", VISION_MODEL_HINTS))
            self.errors.send_admin_alert(
                f"media:no_image_input:{adapter.settings.model}",
                f"model {adapter.settings.model} cannot read photos, so users sending one are asked to describe "
                f"it; models that can: {takers or 'see openrouter.ai/models'}")
            return self._store_canned(conversation, question, PHOTOS_UNSEEN, "photo_unsupported")
        # One message's downloads share one AI_DEADLINE, inside the job's own deadline.
        downloads_until = self.clock() + media.deadline if until is None else min(until, self.clock() + media.deadline)
        fetched: list[tuple[MediaKind, Media]] = []
        skipped, budget = [], media.max_message_bytes
        try:
            for position, (item, kind) in enumerate(zip(items, kinds, strict=True), start=1):
                try:
                    # Downloading can take seconds: hold no database connection meanwhile.
                    with connection_released():
                        download = media.fetch(item["url"], item.get("content_type", ""), max_bytes=budget,
                                               until=downloads_until)
                except MediaTooLarge as error:
                    log.warning("%s attachment=%d of %d skipped: %s", context, position, len(items), error)
                    skipped.append(position)
                    continue
                attachments.callback(download.close)
                budget -= download.size
                fetched.append((kind, download))
            if fetched:
                with connection_released():
                    attachments.enter_context(media.memory.hold(sum(download.size for _, download in fetched),
                                                                downloads_until))
        except MediaError as error:
            if error.retryable and not final_attempt:
                raise
            self.errors.handle(Category.SYSTEM, error, context)
            return self._store_canned(conversation, question, MEDIA_UNREADABLE, "media_unreadable")
        if not fetched:
            files = "That file is" if len(items) == 1 else "Those files are"
            return self._store_canned(conversation, question, self._too_large(MEDIA_TOO_LARGE, files),
                                      "media_too_large")
        parts, transcripts, media_cost, stand_ins = [], [], 0.0, []
        caption = question.content.strip()
        for kind, download in fetched:
            if kind is MediaKind.AUDIO:
                try:
                    with connection_released():
                        transcript = adapter.transcribe(download.content(), AUDIO_FORMATS[download.content_type],
                                                        self.transcription_model, until=until)
                except AIError as error:
                    if error.retryable and not final_attempt and not error.deadline_exceeded:
                        raise
                    self.errors.handle(Category.AI, error, context)
                    return self._store_canned(conversation, question, VOICE_UNHEARD, "voice_unheard")
                transcripts.append(transcript.text)
                media_cost = total_cost(media_cost, transcript.cost)
            elif kind is MediaKind.IMAGE:
                parts.append({"type": "image_url", "image_url": {"url": download.data_url()}})
                stand_ins.append(f"[photo: {caption}]" if caption else "[photo]")
            else:
                parts.append({"type": "file", "file": {"filename": f"document-{question.id}.pdf",
                                                       "file_data": download.data_url()}})
                stand_ins.append(f"[PDF document: {caption}]" if caption else "[PDF document]")
        if transcripts:
            question.metadata = {**question.metadata, "transcript": "\n".join(transcripts)}
        if stand_ins:
            question.metadata = {**question.metadata, "stand_in": " ".join(stand_ins)}
        if skipped:
            question.metadata = {**question.metadata, "media_skipped": skipped}
        text = prompt_text(question)
        return UserTurn([{"type": "text", "text": text}, *parts] if parts else text, media_cost)

    def _too_large(self, template: str, files: str) -> str:
        """Fill a too-large notice with the files it names and the limits in force, in MB."""
        return template.format(files=files, total=megabytes(self.channel.media.max_message_bytes),
                               each=megabytes(self.channel.media.max_bytes))

    def assistant_of(self, conversation: Conversation) -> Assistant:
        """Return how the number the conversation is with answers (the defaults when no directory is given)."""
        if self.channel.numbers is None:
            return Assistant(key=conversation.number, address=conversation.number, label=conversation.number)
        return self.channel.numbers.for_key(conversation.number)

    def _greeted(self, conversation: Conversation, question: Message, text: str) -> str:
        """Put the number's greeting before the answer to a sender's first message to it."""
        greeting = self.assistant_of(conversation).greeting.strip()
        if not greeting:
            return text
        earlier = (
            Message.select(Message.id)
            .join(Conversation)
            .where(Conversation.user_phone == conversation.user_phone, Conversation.number == conversation.number,
                   Message.role == Role.USER.value, Message.id < question.id)
            .exists()
        )
        return text if earlier else f"{greeting}\n\n{text}"

    def _store_canned(self, conversation: Conversation, question: Message, text: str, kind: str,
                      status: Status = Status.ANSWERED, answer_metadata: dict | None = None,
                      cost: float | None = None, model: str | None = None) -> Message:
        """Store a reply the AI did not write (a command's answer, a budget notice) as the question's
        unsent answer, the question marked `status`. With `answer_metadata` the reply answers the
        question as the AI would have (an approved answer): it is remembered in the context, not canned."""
        if not kind.startswith(NOT_GREETED):
            text = self._greeted(conversation, question, text)
        with database.atomic():
            question.status = status.value
            question.save()
            return Message.create(conversation=conversation, role=Role.ASSISTANT.value, content=text,
                                  status=Status.UNSENT.value, reply_to=question,
                                  metadata={"canned": kind} if answer_metadata is None else answer_metadata,
                                  origin=self.channel.origin.value, cost=cost, model=model)

    def _apologise(self, conversation: Conversation, question: Message, reason: str,
                   category: Category) -> Message:
        """Mark `question` failed and store the canned apology as its (unsent) answer."""
        with database.atomic():
            question.status = Status.FAILED.value
            question.error = reason
            question.save()
            return Message.create(
                conversation=conversation,
                role=Role.ASSISTANT.value,
                origin=self.channel.origin.value,
                content=self.errors.user_message(category),
                status=Status.UNSENT.value,
                reply_to=question,
                metadata={"canned": f"{category.value}_failure"},
                error=reason,
            )

    def _deliver(self, conversation: Conversation, question: Message, answer: Message,
                 final_attempt: bool) -> int:
        if answer.status != Status.UNSENT.value:
            return 0
        if not answer.metadata.get("canned"):
            # Idempotent, so a job that crashed after storing the answer still leaves it in context.
            self.context.add_exchange(conversation.id, question, answer)
        sent = []

        def note_intent(number: int) -> None:
            # Written before Twilio sees the part: a run that dies before recording the result
            # leaves this, and the next run asks Twilio instead of sending the part twice.
            Message.update(sending_part=number, sending_since=utcnow()).where(Message.id == answer.id).execute()

        def record_part(number: int, sid: str) -> None:
            sent.append(sid)
            metrics.count_send()
            with database.atomic():
                Message.update(parts_sent=number, sending_part=None, sending_since=None).where(
                    Message.id == answer.id).execute()
                # Twilio's delivery reports for this part find it by its sid.
                ReplyPart.record(answer.id, number, sid)

        unconfirmed = answer.sending_since if answer.sending_part == answer.parts_sent + 1 else None
        window = conversation.service_window()
        past_window = window.is_closed()
        try:
            if not past_window and not self._send_free_form(conversation, answer, unconfirmed, note_intent,
                                                            record_part):
                # Twilio refused a part outright for the window: it took nothing there is to ask about.
                past_window, unconfirmed = True, None
            if past_window and not self._send_past_window(conversation, answer, window,
                                                          answer.parts_sent + len(sent), unconfirmed,
                                                          note_intent, record_part):
                return len(sent)
        except WhatsAppError as error:
            metrics.count_send(error)
            if error.status is not None:
                # Twilio answered with a refusal: the part was not taken, nothing to ask about later.
                Message.update(sending_part=None, sending_since=None).where(Message.id == answer.id).execute()
            if error.retryable and not final_attempt:
                raise
            self.errors.handle(Category.WHATSAPP, error,
                               f"message_id={answer.id} sender={mask_phone(conversation.user_phone)}")
            # A transient failure keeps the answer unsent: the sweeper sends it when Twilio recovers.
            status = Status.UNSENT if error.retryable else Status.SEND_FAILED
            Message.update(status=status.value, error=str(error)).where(Message.id == answer.id).execute()
            if error.retryable:
                raise
            return len(sent)
        Message.update(status=Status.SENT.value, sent_at=utcnow()).where(Message.id == answer.id).execute()
        return len(sent)

    def _send_free_form(self, conversation: Conversation, answer: Message, unconfirmed: datetime | None,
                        note_intent: Callable[[int], None], record_part: Callable[[int, str], None]) -> bool:
        """Send what is left of `answer` as ordinary messages; return False when Twilio refused it for
        WhatsApp's 24-hour window (its clock may close the window a little before ours)."""
        content_sid = answer.metadata.get("content_sid")
        try:
            if content_sid:
                # A message with buttons (the rating question): the approved template, as it is.
                if not answer.parts_sent:
                    note_intent(1)
                    record_part(1, self.channel.sender.send_template(
                        conversation.user_phone, content_sid, answer.content, unconfirmed_since=unconfirmed,
                        from_number=conversation.number, fills_variable=False))
                return True
            self.channel.sender.send(conversation.user_phone, answer.content, already_sent=answer.parts_sent,
                               on_part_sent=record_part, before_part=note_intent, unconfirmed_since=unconfirmed,
                               from_number=conversation.number)
        except WhatsAppError as error:
            if error.code != WINDOW_CLOSED_CODE:
                raise
            metrics.count_send(error)
            Message.update(sending_part=None, sending_since=None).where(Message.id == answer.id).execute()
            log.info("message_id=%s refused by Twilio: outside the 24-hour window", answer.id)
            return False
        return True

    def _send_past_window(self, conversation: Conversation, answer: Message, window: ServiceWindow,
                          already_sent: int, unconfirmed: datetime | None, note_intent: Callable[[int], None],
                          record_part: Callable[[int, str], None]) -> bool:
        """Send what is left of `answer` as the number's approved template, the one message WhatsApp
        takes past the 24-hour window; with no template, mark it outside_window with the fix (it is
        never retried). Return whether it went."""
        assistant = self.assistant_of(conversation)
        if not assistant.template_sid:
            reason = outside_window_reason(window, assistant.address or self.channel.sender.from_number,
                                           default_number=not assistant.key)
            Message.update(status=Status.OUTSIDE_WINDOW.value, error=reason, sending_part=None,
                           sending_since=None).where(Message.id == answer.id).execute()
            log.warning("message_id=%s sender=%s not sent: outside the 24-hour window and no template",
                        answer.id, mask_phone(conversation.user_phone))
            self.errors.send_admin_alert(
                f"whatsapp:outside_window:{assistant.key or 'default'}",
                mask_phones_in(f"a reply on {assistant.label} is held (outside_window): {reason}"))
            return False
        number = already_sent + 1
        note_intent(number)
        sid = self.channel.sender.send_template(conversation.user_phone, assistant.template_sid,
                                          self.channel.sender.unsent_text(answer.content, already_sent),
                                          unconfirmed_since=unconfirmed, from_number=conversation.number)
        record_part(number, sid)
        Message.update(metadata={**answer.metadata, "template": assistant.template_sid}).where(
            Message.id == answer.id).execute()
        log.info("message_id=%s sent past the 24-hour window as template %s", answer.id, assistant.template_sid)
        return True


def outside_window_reason(window: ServiceWindow, address: str, default_number: bool) -> str:
    """Say, for the operator, why a reply was not sent past the 24-hour window and how to fix it."""
    last = window.last_user_message_at
    when = f"was at {last:%Y-%m-%d %H:%M} UTC" if last else "is not on record"
    setting = "WINDOW_TEMPLATE_SID or " if default_number else ""
    return (f"outside WhatsApp's 24-hour window: the user's last message {when}; configure an approved "
            f"template ({setting}`.venv/bin/flask numbers update {address} --template HX…`) or wait for the user "
            "to write again")


def prompt_text(question: Message) -> str:
    """Return the text the model reads for a user message: its voice note's transcript, else its
    text (a photo's or document's caption, which the attachment itself accompanies)."""
    transcript = question.metadata.get("transcript")
    if transcript:
        return transcript
    if question.metadata.get("media") and not question.content.strip():
        return "[The user sent the attached file with no text.]"
    return question.content


def files_named(positions: list[int]) -> str:
    """Name attachments by their place in the message: `file 2`, `files 2, 3 and 4`."""
    numbers = [str(position) for position in positions]
    if len(numbers) == 1:
        return f"file {numbers[0]}"
    return f"files {', '.join(numbers[:-1])} and {numbers[-1]}"


def total_cost(*costs: float | None) -> float | None:
    """Add up costs in USD; None when any is unknown (an unknown cost is not a zero one)."""
    if any(cost is None for cost in costs):
        return None
    return sum(costs)
