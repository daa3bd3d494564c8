"""The Search page: customers' and the assistant's WhatsApp messages found by their words (chatbot.search),
each a link into its transcript at the message, phone numbers masked."""
from __future__ import annotations

from flask import make_response, request, url_for
from flask_admin import BaseView, expose

from chatbot.admin.panel import (
    DEFAULT_NUMBER_CHOICE,
    LoginRequired,
    masked,
    number_labels,
    number_name,
    phone_column,
    services,
)
from chatbot.clock import in_zone
from chatbot.models import Message, Role
from chatbot.sanitizer import MAX_STORED_INT, whole_number
from chatbot.search import PAGE_SIZE, highlighted, search_messages
from chatbot.web.security import DASHBOARD_CSP

# A query longer than this is cut: the words past it would not narrow the search (MAX_TERMS) anyway.
MAX_QUERY_CHARS = 200
# The farthest page asked for: its offset must fit the database's integers.
LAST_PAGE = MAX_STORED_INT // PAGE_SIZE


def chosen_number(choice: str, labels: dict[str, str]) -> str | None:
    """Return the conversation key the number filter names; None (every number) for none or an unknown one."""
    key = "" if choice == DEFAULT_NUMBER_CHOICE else choice
    return key if choice and key in labels else None


def transcript_link(message: Message) -> str:
    """The transcript of the message's conversation, scrolled to the message."""
    return f"{url_for('conversation.details_view', id=message.conversation_id)}#message-{message.id}"


def who_wrote(message: Message) -> str:
    """Say who wrote a message: the customer, the assistant, or the operator by name."""
    if message.role == Role.USER.value:
        return "customer"
    return f"operator {message.operator}" if message.operator else "assistant"


class SearchView(LoginRequired, BaseView):
    """Messages holding every word typed, best match first, 50 a page; numbers masked, so viewers may
    search too."""

    @expose("/")
    def index(self):
        query = (request.args.get("q") or "")[:MAX_QUERY_CHARS]
        page = min(whole_number(request.args.get("page", ""), minimum=1) or 1, LAST_PAGE)
        labels = number_labels()
        choice = request.args.get("number") or ""
        number = chosen_number(choice, labels)
        results = search_messages(query, PAGE_SIZE, page, number)
        zone_name = services().config.admin_timezone
        rows = [
            {
                "message": hit.message,
                "link": transcript_link(hit.message),
                "when": in_zone(hit.message.created_at, zone_name),
                "number": number_name(hit.message.conversation.number, labels),
                "sender": phone_column(self, None, hit.message.conversation, "user_phone"),
                "who": who_wrote(hit.message),
                "snippet": highlighted(hit.snippet, masked),
            }
            for hit in results.hits
        ]
        filters = {"q": query, "number": choice if number is not None else ""}
        page_html = self.render("chatbot_admin/search.html", rows=rows, results=results, page=page, filters=filters,
                                numbers=[(key or DEFAULT_NUMBER_CHOICE, label) for key, label in labels.items()],
                                zone_name=zone_name, page_size=PAGE_SIZE)
        response = make_response(page_html)
        # Customers' words are shown here: the page runs no script but our own files.
        response.headers["Content-Security-Policy"] = DASHBOARD_CSP
        return response
