"""Peewee models by concern, their queries as classmethods, and the schema's migrations.

Import models from here: `from chatbot.models import Conversation, Message`.
"""
from chatbot.models.audit import WebhookLog
from chatbot.models.base import DELETE_BATCH, BaseModel, JSONField, Origin, Role, Status, utcnow
from chatbot.models.campaigns import (
    MAX_SKIPS_KEPT,
    Campaign,
    CampaignRecipient,
    CampaignResults,
    CampaignStatus,
    RecipientStatus,
)
from chatbot.models.conversation import (
    DELIVERY_FAILURES,
    DELIVERY_PROGRESS,
    DELIVERY_SETTLED,
    FAILURE_STATUSES,
    ONE_ACTIVE_INDEX,
    SERVICE_WINDOW,
    TWILIO_MESSAGE_SID,
    UNDELIVERED_STATUSES,
    Conversation,
    Dismissal,
    Message,
    ReplyPart,
    ServiceWindow,
)
from chatbot.models.handoff import MODEL_REASONS, REASON_WORDS, CannedReply, Handoff, HandoffReason, Note
from chatbot.models.knowledge import (
    ApprovedAnswer,
    GapReason,
    KnowledgeGap,
    KnowledgeSource,
    KnowledgeSpend,
    Passage,
    SourceKind,
    SourceStatus,
)
from chatbot.models.notices import Notice
from chatbot.models.ratings import SCORES, Rating
from chatbot.models.settings import (
    MAX_GREETING_CHARS,
    PROVIDERS,
    AccessEntry,
    AIConfiguration,
    OptOut,
    Setting,
    WhatsAppNumber,
)
from chatbot.models.tools import (
    FAILED_TOOL_USES,
    MAX_SCHEDULED_FOLLOW_UPS,
    FollowUp,
    FollowUpStatus,
    Tool,
    ToolAuth,
    ToolRisk,
    ToolUse,
    ToolUseStatus,
)
from chatbot.models.users import AdminUser, AuditEvent

__all__ = [
    "DELETE_BATCH", "DELIVERY_FAILURES", "SCORES", "Rating", "FAILED_TOOL_USES", "MAX_SCHEDULED_FOLLOW_UPS", "FollowUp",
    "FollowUpStatus", "Tool", "ToolAuth", "ToolRisk", "ToolUse", "ToolUseStatus",
    "DELIVERY_PROGRESS", "DELIVERY_SETTLED", "FAILURE_STATUSES",
    "MAX_GREETING_CHARS", "MODEL_REASONS", "ONE_ACTIVE_INDEX", "PROVIDERS", "REASON_WORDS", "SERVICE_WINDOW",
    "TWILIO_MESSAGE_SID", "UNDELIVERED_STATUSES", "AccessEntry", "AdminUser", "AuditEvent", "AIConfiguration",
    "ApprovedAnswer", "MAX_SKIPS_KEPT", "Campaign", "CampaignRecipient", "CampaignResults", "CampaignStatus",
    "RecipientStatus",
    "BaseModel", "CannedReply", "Conversation", "Dismissal", "GapReason", "Handoff", "HandoffReason", "JSONField",
    "KnowledgeGap", "KnowledgeSource", "KnowledgeSpend", "Message", "Note", "Notice", "OptOut", "Origin", "Passage",
    "ReplyPart", "Role", "ServiceWindow", "Setting", "SourceKind", "SourceStatus", "Status", "utcnow",
    "WebhookLog", "WhatsAppNumber",
]
