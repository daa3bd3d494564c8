"""The Knowledge page: the sources the assistant answers from, a search preview, approved answers and
the questions the knowledge did not cover. Every change goes through chatbot.knowledge.sources, as
`flask knowledge` does; indexing itself runs in the worker."""
from __future__ import annotations

import logging

from flask import flash, make_response, redirect, request
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm
from redis.exceptions import RedisError
from werkzeug.exceptions import RequestEntityTooLarge

from chatbot.admin.panel import DEFAULT_NUMBER_CHOICE, LoginRequired, masked, number_labels, services, signed_in_admin
from chatbot.errors import AIError
from chatbot.knowledge import sources
from chatbot.media import megabytes
from chatbot.models import ApprovedAnswer, GapReason, KnowledgeGap, KnowledgeSource, Message, Role, SourceKind
from chatbot.roles import Role as TeamRole
from chatbot.sanitizer import whole_number
from chatbot.web.security import DASHBOARD_CSP

log = logging.getLogger(__name__)

# How the form names "every number" (a source or answer whose number is None).
ALL_NUMBERS = "all"
KIND_NAMES = {SourceKind.FILE.value: "file", SourceKind.URL.value: "web page", SourceKind.SITEMAP.value: "site",
              SourceKind.TEXT.value: "text"}
FILE_TYPES = ".pdf,.docx,.md,.markdown,.txt,.html,.htm"
# What a multipart upload carries beside the file: the other fields and the parts' headers.
FORM_ALLOWANCE = 1024 * 1024
NOT_QUEUED = ("It is stored but could not be queued (Redis is unreachable); the worker picks it up once Redis "
              "is back.")
EXPIRED = "The request expired; please try again."


def upload_cap(max_file_bytes: int) -> int:
    """The largest upload read: the app caps request bodies at MAX_REQUEST_BYTES (enough for webhooks),
    while a file up to twice KNOWLEDGE_MAX_FILE_BYTES is taken in, so one over the limit is listed as
    failed with its reason rather than refused without one."""
    return 2 * max_file_bytes + FORM_ALLOWANCE


def scope_choices() -> list[tuple[str, str]]:
    """The number scopes a form offers: every number, then each configured number by its label."""
    return [(ALL_NUMBERS, "all numbers")] + [(key or DEFAULT_NUMBER_CHOICE, label)
                                             for key, label in number_labels().items()]


def chosen_scope(choice: str | None) -> str | None:
    """Return the number key a form's scope names (None: every number); an unknown one is refused."""
    if not choice or choice == ALL_NUMBERS:
        return None
    key = "" if choice == DEFAULT_NUMBER_CHOICE else choice
    if key not in number_labels():
        raise sources.KnowledgeInputError("that number is not one of the configured numbers")
    return key


def scope_choice(key: str | None) -> str:
    """The form value of a number key (the inverse of chosen_scope)."""
    return ALL_NUMBERS if key is None else (key or DEFAULT_NUMBER_CHOICE)


def scope_name(key: str | None, labels: dict[str, str]) -> str:
    """Name a scope: every number, or the number by its label (a number removed since, masked)."""
    if key is None:
        return "all numbers"
    return labels.get(key) or masked(key)


def gap_reason(gap: KnowledgeGap) -> str:
    """Say in words why the knowledge did not cover a question."""
    if gap.reason == GapReason.NOT_COVERED.value:
        return "the answer said the sources do not cover it"
    if gap.best_score is None:
        return "there was no indexed knowledge to search"
    return f"best passage scored low ({gap.best_score:.2f})"


def question_before(answer: Message) -> str:
    """Return the user's words an assistant answer answers: its burst's questions, else the newest
    user message stored before it."""
    asked = answer.metadata.get("answers") or ([answer.reply_to_id] if answer.reply_to_id else [])
    if asked:
        questions = (Message.select(Message.content)
                     .where(Message.id.in_(asked), Message.role == Role.USER.value)
                     .order_by(Message.id))
        return "\n".join(question.content for question in questions)
    before = (Message.select(Message.content)
              .where(Message.conversation == answer.conversation_id, Message.role == Role.USER.value,
                     Message.id < answer.id)
              .order_by(Message.id.desc())
              .first())
    return before.content if before else ""


class KnowledgeView(LoginRequired, BaseView):
    """Sources, approved answers, a search preview and the questions the knowledge did not cover."""

    # Reading and the search preview are for everyone; every change, and its forms, for admins.
    roles_needed = {"search_view": TeamRole.VIEWER, "new_approved_view": TeamRole.ADMIN,
                    "edit_approved_view": TeamRole.ADMIN}

    @expose("/")
    def index(self):
        return self._page()

    @expose("/search/", methods=("POST",))
    def search_view(self):
        question = (request.form.get("question") or "").strip()
        choice = request.form.get("number", ALL_NUMBERS)
        preview = {"question": question, "choice": choice}
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
            return redirect(self.get_url(".index"))
        if not question:
            flash("Write a test question first.", "error")
            return redirect(self.get_url(".index"))
        built = services()
        try:
            found, approved, score = sources.try_question(built.retriever, built.ai_factory.current(), question,
                                                          chosen_scope(choice))
        except sources.KnowledgeInputError as error:
            flash(f"Not searched: {error}.", "error")
            return redirect(self.get_url(".index"))
        except AIError as error:
            log.warning("knowledge search preview: embeddings failed: %s", error)
            preview["error"] = (f"The question could not be embedded: {masked(error)}. Check EMBEDDING_MODEL and "
                                "the OpenRouter key (the dashboard's Test, or flask check-config).")
        else:
            preview.update(found=found, approved=approved, score=score, min_score=built.retriever.min_score)
        return self._page(preview=preview)

    @expose("/sources/file/", methods=("POST",))
    def add_file_view(self):
        max_bytes = services().config.knowledge_max_file_bytes
        request.max_content_length = upload_cap(max_bytes)
        try:
            upload = request.files.get("file")
            form = request.form
        except RequestEntityTooLarge:
            flash(f"Not added: the upload is far over the {megabytes(max_bytes)} MB a file may have "
                  "(KNOWLEDGE_MAX_FILE_BYTES).", "error")
            return redirect(self.get_url(".index"))
        if not SecureForm(form).validate():
            flash(EXPIRED, "error")
        elif upload is None or not upload.filename:
            flash("Not added: choose a file to upload.", "error")
        else:
            # One byte past the limit says it is too large; the rest is never read into memory.
            data = upload.stream.read(max_bytes + 1)
            self._add(lambda: sources.add_file(services().queue, data, upload.filename, max_bytes,
                                               chosen_scope(form.get("number")), form.get("title", ""),
                                               upload.mimetype or ""))
        return redirect(self.get_url(".index"))

    @expose("/sources/url/", methods=("POST",))
    def add_url_view(self):
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
        else:
            self._add(lambda: sources.add_url(services().queue, request.form.get("url", ""),
                                              chosen_scope(request.form.get("number")),
                                              request.form.get("title", ""), sitemap=bool(request.form.get("sitemap"))))
        return redirect(self.get_url(".index"))

    @expose("/sources/text/", methods=("POST",))
    def add_text_view(self):
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
        else:
            self._add(lambda: sources.add_text(services().queue, request.form.get("text", ""),
                                               request.form.get("title", ""),
                                               chosen_scope(request.form.get("number"))))
        return redirect(self.get_url(".index"))

    @expose("/sources/<row_id:source_id>/sync/", methods=("POST",))
    def sync_view(self, source_id):
        source = KnowledgeSource.get_or_none(KnowledgeSource.id == source_id)
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
        elif source is None:
            flash("That source is gone already.", "error")
        else:
            try:
                queued = sources.sync(services().queue, source_id)
            except RedisError as error:
                log.error("knowledge source=%s sync not queued: %s", source_id, error)
                flash(f"{source.title}: {NOT_QUEUED}", "error")
            else:
                if queued:
                    flash(f"{source.title}: queued to be read again.", "success")
                else:
                    flash(f"{source.title}: nothing to read again (an upload over the size limit keeps no "
                          "bytes); upload the file again.", "error")
        return redirect(self.get_url(".index"))

    @expose("/sources/<row_id:source_id>/delete/", methods=("POST",))
    def delete_view(self, source_id):
        source = KnowledgeSource.get_or_none(KnowledgeSource.id == source_id)
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
        elif source is None or not sources.remove(source_id):
            flash("That source is gone already.", "error")
        else:
            flash(f"Deleted {source.title} and its passages.", "success")
        return redirect(self.get_url(".index"))

    @expose("/approved/new/")
    def new_approved_view(self):
        """The approved-answer form, pre-filled from a gap (?gap=) or a transcript's answer (?message=)."""
        gap_id, message_id = whole_number(request.args.get("gap", "")), whole_number(request.args.get("message", ""))
        filled = {"question": "", "answer": "", "choice": ALL_NUMBERS, "gap": None}
        if gap_id:
            gap = KnowledgeGap.get_or_none(KnowledgeGap.id == gap_id)
            if gap is None or gap.answered_at is not None:
                flash("That question has an approved answer already (or is gone).", "error")
                return redirect(self.get_url(".index"))
            filled.update(question=gap.question, choice=scope_choice(gap.number), gap=gap)
        elif message_id:
            answer = Message.get_or_none(Message.id == message_id, Message.role == Role.ASSISTANT.value)
            if answer is None:
                flash("That answer is gone.", "error")
                return redirect(self.get_url(".index"))
            filled.update(question=question_before(answer), answer=answer.content,
                          choice=scope_choice(answer.conversation.number))
        return self._approved_form(filled)

    @expose("/approved/<row_id:answer_id>/edit/")
    def edit_approved_view(self, answer_id):
        approved = ApprovedAnswer.get_or_none(ApprovedAnswer.id == answer_id)
        if approved is None:
            flash("That approved answer is gone.", "error")
            return redirect(self.get_url(".index"))
        return self._approved_form({"question": approved.question, "answer": approved.answer,
                                    "choice": scope_choice(approved.number), "gap": None}, approved)

    @expose("/approved/save/", methods=("POST",))
    def save_approved_view(self):
        form = request.form
        answer_id, gap_id = whole_number(form.get("id", "")), whole_number(form.get("gap", ""))
        if not SecureForm(form).validate():
            flash(EXPIRED, "error")
            return redirect(self.get_url(".index"))
        try:
            number = chosen_scope(form.get("number"))
            if answer_id:
                sources.edit_approved(services().queue, answer_id, form.get("question", ""), form.get("answer", ""),
                                      number)
            else:
                sources.approve(services().queue, form.get("question", ""), form.get("answer", ""), number,
                                created_by=signed_in_admin().username, gap_id=gap_id)
        except sources.KnowledgeInputError as error:
            flash(f"Not saved: {error}.", "error")
            # The form again, as written: nothing typed is lost.
            gap = KnowledgeGap.get_or_none(KnowledgeGap.id == gap_id) if gap_id else None
            approved = ApprovedAnswer.get_or_none(ApprovedAnswer.id == answer_id) if answer_id else None
            return self._approved_form({"question": form.get("question", ""), "answer": form.get("answer", ""),
                                        "choice": form.get("number", ALL_NUMBERS), "gap": gap}, approved)
        except LookupError:
            flash("That approved answer is gone.", "error")
        except RedisError as error:
            log.error("approved answer embedding not queued: %s", error)
            flash(f"Approved answer saved. {NOT_QUEUED}", "error")
        else:
            flash("Approved answer saved: it answers once the worker has embedded its question.", "success")
        return redirect(self.get_url(".index") + "#approved")

    @expose("/approved/<row_id:answer_id>/delete/", methods=("POST",))
    def delete_approved_view(self, answer_id):
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
        elif ApprovedAnswer.delete().where(ApprovedAnswer.id == answer_id).execute():
            flash("Approved answer deleted.", "success")
        else:
            flash("That approved answer is gone already.", "error")
        return redirect(self.get_url(".index") + "#approved")

    def _page(self, preview: dict | None = None):
        labels = number_labels()
        page = self.render(
            "chatbot_admin/knowledge.html",
            sources=list(KnowledgeSource.listed()),
            approved=list(ApprovedAnswer.select().order_by(ApprovedAnswer.created_at.desc(), ApprovedAnswer.id.desc())),
            gaps=list(KnowledgeGap.open_gaps()),
            embedding_key=services().retriever.key,
            scopes=scope_choices(),
            scope_name=lambda key: scope_name(key, labels),
            kind_names=KIND_NAMES,
            gap_reason=gap_reason,
            file_types=FILE_TYPES,
            max_file_mb=megabytes(services().config.knowledge_max_file_bytes),
            preview=preview,
        )
        return self._strict(page)

    def _approved_form(self, filled: dict, approved: ApprovedAnswer | None = None):
        return self._strict(self.render("chatbot_admin/knowledge_approved.html", filled=filled, approved=approved,
                                        scopes=scope_choices()))

    @staticmethod
    def _strict(page):
        """Serve a page of ours under the dashboard's policy: it runs no script of its own."""
        response = make_response(page)
        response.headers["Content-Security-Policy"] = DASHBOARD_CSP
        return response

    @staticmethod
    def _add(add) -> None:
        """Run one of sources.add_*, and say what came of it."""
        try:
            source = add()
        except sources.KnowledgeInputError as error:
            flash(f"Not added: {error}.", "error")
        except RedisError as error:
            log.error("knowledge source not queued: %s", error)
            flash(f"Source added. {NOT_QUEUED}", "error")
        else:
            if source.status == "failed":
                flash(f"{source.title}: failed: {source.reason}", "error")
            else:
                flash(f"{source.title}: added, waiting for the worker to index it.", "success")
