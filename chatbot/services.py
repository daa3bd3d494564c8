"""Build the clients every process needs from the settings, in one place."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from redis import Redis
from requests.adapters import HTTPAdapter
from rq import Queue

from chatbot.ai import AIAdapterFactory
from chatbot.alerts import ErrorHandler
from chatbot.campaigns.pacing import Pacer
from chatbot.campaigns.sending import CampaignSender, senders_for
from chatbot.channels import Channel, operator_channel, whatsapp_channel
from chatbot.context import ConversationManager
from chatbot.crypto import FieldCipher
from chatbot.handoff import Handoffs, holding_message
from chatbot.knowledge.index import Indexer, IndexLimits
from chatbot.knowledge.retrieval import Retriever
from chatbot.media import MediaFetcher
from chatbot.models import Notice, Origin
from chatbot.models.db import POOL_SIZE, open_database
from chatbot.notify import Notifier
from chatbot.numbers import NumberDirectory
from chatbot.outbound import OutboundGuard, guarded_session
from chatbot.pricing import CostEstimator
from chatbot.processor import MessageProcessor
from chatbot.rate_limiter import RateLimiter
from chatbot.stages.access import AccessPolicy
from chatbot.stages.approved import ApprovedAnswers
from chatbot.stages.budget import Budgets
from chatbot.stages.commands import UserCommands
from chatbot.stages.handoff import HandoffRequests
from chatbot.stages.optouts import OptOuts
from chatbot.stages.rehearsal import CustomersOwnCommands, HandoffPreview
from chatbot.stages.words import CommandWords
from chatbot.tools.calls import ToolCaller
from chatbot.tools.loop import Toolbox
from chatbot.whatsapp import STATUS_CALLBACK_PATH, WhatsAppClient
from config import Config

QUEUE_NAME = "chatbot"


@dataclass
class Services:
    """The built clients of one process; tests swap them for ones aimed at fakes."""

    config: Config
    redis: Redis
    queue: Queue
    cipher: FieldCipher
    context: ConversationManager
    ai_factory: AIAdapterFactory
    whatsapp: WhatsAppClient
    # Fetches customers' files from Twilio: for the worker's answers and the transcript's pictures alike.
    media: MediaFetcher
    processor: MessageProcessor
    access: AccessPolicy
    rate_limiter: RateLimiter
    errors: ErrorHandler
    budgets: Budgets
    numbers: NumberDirectory
    retriever: Retriever
    indexer: Indexer
    notifier: Notifier
    campaigns: CampaignSender

    def operator_channel(self, origin: Origin, sender, approved: ApprovedAnswers | None = None) -> Channel:
        """The channel of an operator's try (`flask chat`, the playground) replying through `sender`:
        the customers' command words, as configured, answer there too."""
        words = CommandWords(self.config.user_commands)
        commands = UserCommands(self.redis, self.context, sender, words, self.config.site_name)
        return operator_channel(origin, sender, OptOuts(words), commands, CustomersOwnCommands(words, commands),
                                HandoffPreview(words, lambda: holding_message(self.config)), approved)


def http_pool_size(config: Config) -> int:
    """Keep a connection per job a worker may run at once (and never fewer than requests' ten)."""
    return max(10, config.worker_concurrency)


def pooled_session(pool_size: int) -> requests.Session:
    """Return a session that keeps up to `pool_size` connections per host alive."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def own_host(config: Config) -> str:
    """This service's public host name: no tool may call it."""
    return (urlsplit(config.public_base_url).hostname or "") if config.public_base_url else ""


def build_services(config: Config, ai_options: dict | None = None,
                   whatsapp_options: dict | None = None) -> Services:
    """Open the database and build Redis, the queue and the upstream clients from `config`."""
    # A worker's jobs each may hold a connection while they write and send.
    open_database(config.database_url, pool_size=max(POOL_SIZE, config.worker_concurrency),
                  writer_wait=config.sqlite_writer_wait)
    redis = Redis.from_url(config.redis_url, socket_timeout=5, socket_connect_timeout=5,
                           health_check_interval=30, **config.redis_options())
    cipher = FieldCipher(config.field_encryption_key)
    context = ConversationManager(redis, config.max_context_messages, config.conversation_ttl)
    errors = ErrorHandler(redis, config.alert_webhook_url, keep_notice=Notice.keep)
    access = AccessPolicy(redis, config.access_mode, config.access_list, config.access_notice)
    numbers = NumberDirectory(config.twilio_whatsapp_number, config.window_template_sid)
    ai_factory = AIAdapterFactory(config, cipher, pooled_session(http_pool_size(config)), **(ai_options or {}))
    budgets = Budgets(redis, errors, config.budget_per_sender_daily, config.budget_monthly,
                      CostEstimator(ai_factory, context), zone=config.admin_timezone)
    whatsapp = WhatsAppClient(
        config.twilio_account_sid,
        config.twilio_auth_token,
        config.twilio_whatsapp_number,
        api_base_url=config.twilio_api_base_url,
        pool_size=http_pool_size(config),
        max_parts=config.max_reply_parts,
        status_callback=config.public_base_url and config.public_base_url + STATUS_CALLBACK_PATH,
        **(whatsapp_options or {}),
    )
    retriever = Retriever(config.embedding_model, config.embedding_dimensions, config.knowledge_max_tokens,
                          config.knowledge_min_score, config.approved_answer_min_score)
    guarded = guarded_session(OutboundGuard(config.allow_private_hosts), http_pool_size(config))
    words = CommandWords(config.user_commands)
    queue = Queue(QUEUE_NAME, connection=redis)
    handoffs = Handoffs(queue, config)
    toolbox = Toolbox(ToolCaller(guarded, cipher, own_host(config)), config.tool_max_rounds, config.admin_timezone)
    media = MediaFetcher(pooled_session(http_pool_size(config)),
                         guarded, config.twilio_account_sid, config.twilio_auth_token, config.twilio_api_base_url,
                         max_bytes=config.max_media_bytes, max_message_bytes=config.max_media_bytes_per_message,
                         max_bytes_in_memory=config.max_media_bytes_in_memory, deadline=config.ai_deadline)
    channel = whatsapp_channel(
        whatsapp,
        OptOuts(words),
        UserCommands(redis, context, whatsapp, words, config.site_name),
        access,
        budgets,
        media,
        numbers,
        ApprovedAnswers(retriever, ai_factory),
        HandoffRequests(handoffs, words, config.handoff_phrases),
    )
    return Services(
        config=config,
        redis=redis,
        queue=queue,
        cipher=cipher,
        context=context,
        ai_factory=ai_factory,
        whatsapp=whatsapp,
        media=media,
        processor=MessageProcessor(ai_factory, channel, context, errors, max_inbound_chars=config.max_inbound_chars,
                                   transcription_model=config.transcription_model, retriever=retriever,
                                   handoffs=handoffs, toolbox=toolbox),
        access=access,
        rate_limiter=RateLimiter(redis, config.rate_limit_messages, config.rate_limit_global,
                                 config.rate_limit_window),
        errors=errors,
        budgets=budgets,
        numbers=numbers,
        retriever=retriever,
        indexer=Indexer(retriever, guarded, IndexLimits(config.knowledge_max_file_bytes, config.knowledge_max_pages,
                                                        config.knowledge_fetch_timeout)),
        notifier=Notifier(config, guarded, errors, redis),
        campaigns=CampaignSender(whatsapp, context, Pacer(redis, config.campaign_rate), access, numbers,
                                 config.conversation_ttl, senders=senders_for(config.campaign_rate)),
    )
