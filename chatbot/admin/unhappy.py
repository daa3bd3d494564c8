"""The Unanswered and unhappy page: conversations their customers rated 1 or 2 out of 5 and questions the
knowledge did not cover, merged into one list, newest first, each a link into its transcript."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask import make_response, request, url_for
from flask_admin import BaseView, expose
from peewee import SQL, Value

from chatbot.admin.conversations import shortened
from chatbot.admin.knowledge import gap_reason
from chatbot.admin.panel import LoginRequired, number_labels, number_name, phone_column, services
from chatbot.clock import in_zone
from chatbot.models import Conversation, KnowledgeGap, Message, Rating, Role
from chatbot.sanitizer import MAX_STORED_INT, whole_number
from chatbot.web.security import DASHBOARD_CSP

PAGE_SIZE = 50
LAST_PAGE = MAX_STORED_INT // PAGE_SIZE
# A rating this low or lower is an unhappy customer's.
UNHAPPY_AT_MOST = 2
TOP_SCORE = 5
RATING, GAP = "rating", "gap"
# The question or last customer message is shown cut to this many characters.
TEXT_SHOWN = 160


@dataclass(frozen=True)
class Unhappy:
    """One row: a low rating or a question not covered."""

    kind: str
    created_at: datetime
    conversation: Conversation
    # The message to open the transcript at (None: the conversation's top).
    message_id: int | None
    # The question, or the customer's last message before the rating, as stored.
    text: str


def unhappy_page(page: int, limit: int = PAGE_SIZE) -> tuple[list[Unhappy], bool]:
    """Return page `page` (from 1) of low ratings and knowledge gaps of WhatsApp conversations, newest
    first, and whether another page follows."""
    low = (Rating.select(Value(RATING).alias("kind"), Rating.id.alias("row_id"),
                         Rating.created_at.alias("happened_at"))
           .join(Conversation)
           .where(Rating.score <= UNHAPPY_AT_MOST, Conversation.on_whatsapp()))
    # The playground's trials leave gaps too; they are the operator's, not a customer's.
    gaps = (KnowledgeGap.select(Value(GAP).alias("kind"), KnowledgeGap.id.alias("row_id"),
                                KnowledgeGap.created_at.alias("happened_at"))
            .join(Message)
            .join(Conversation)
            .where(Message.from_whatsapp(), Conversation.on_whatsapp()))
    merged = list((low + gaps)
                  .order_by(SQL("happened_at").desc(), SQL("kind"), SQL("row_id").desc())
                  .limit(limit + 1)
                  .offset((max(page, 1) - 1) * limit)
                  .tuples())
    shown = merged[:limit]
    ratings = _ratings([row_id for kind, row_id, _ in shown if kind == RATING])
    gaps_by_id = _gaps([row_id for kind, row_id, _ in shown if kind == GAP])
    rows = [ratings.get(row_id) if kind == RATING else gaps_by_id.get(row_id) for kind, row_id, _ in shown]
    # A row deleted between the two reads (a /forget) is left out.
    return [row for row in rows if row is not None], len(merged) > limit


def _ratings(rating_ids: list[int]) -> dict[int, Unhappy]:
    if not rating_ids:
        return {}
    Asked = Message.alias()
    # What the customer last wrote before rating: the rating's own reply is a bare score.
    last_asked = (Asked.select(Asked.content)
                  .where(Asked.conversation == Rating.conversation, Asked.role == Role.USER.value,
                         Rating.message.is_null() | (Asked.id < Rating.message))
                  .order_by(Asked.id.desc())
                  .limit(1))
    return {
        rating.id: Unhappy(f"rated {rating.score}/{TOP_SCORE}", rating.created_at, rating.conversation,
                           rating.message_id, rating.last_asked or "")
        for rating in (Rating.select(Rating, Conversation, last_asked.alias("last_asked"))
                       .join(Conversation)
                       .where(Rating.id.in_(rating_ids)))
    }


def _gaps(gap_ids: list[int]) -> dict[int, Unhappy]:
    if not gap_ids:
        return {}
    return {
        gap.id: Unhappy(f"not covered: {gap_reason(gap)}", gap.created_at, gap.message.conversation, gap.message_id,
                        gap.question)
        for gap in (KnowledgeGap.select(KnowledgeGap, Message, Conversation)
                    .join(Message)
                    .join(Conversation)
                    .where(KnowledgeGap.id.in_(gap_ids)))
    }


def transcript_link(row: Unhappy) -> str:
    """The row's conversation, scrolled to its message when it has one."""
    link = url_for("conversation.details_view", id=row.conversation.id)
    return f"{link}#message-{row.message_id}" if row.message_id else link


class UnhappyView(LoginRequired, BaseView):
    """Where the assistant fell short: low ratings and questions the knowledge did not cover, newest first."""

    @expose("/")
    def index(self):
        page = min(whole_number(request.args.get("page", ""), minimum=1) or 1, LAST_PAGE)
        rows, more = unhappy_page(page)
        labels = number_labels()
        zone_name = services().config.admin_timezone
        shown = [
            {
                "row": row,
                "link": transcript_link(row),
                "when": in_zone(row.created_at, zone_name),
                "number": number_name(row.conversation.number, labels),
                "sender": phone_column(self, None, row.conversation, "user_phone"),
                "text": shortened(row.text, TEXT_SHOWN),
            }
            for row in rows
        ]
        page_html = self.render("chatbot_admin/unhappy.html", rows=shown, page=page, more=more, zone_name=zone_name,
                                page_size=PAGE_SIZE, unhappy_at_most=UNHAPPY_AT_MOST, top_score=TOP_SCORE)
        response = make_response(page_html)
        # Customers' words are shown here: the page runs no script but our own files.
        response.headers["Content-Security-Policy"] = DASHBOARD_CSP
        return response
