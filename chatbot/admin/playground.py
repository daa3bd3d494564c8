"""The playground page: chat with the bot as a test user, nothing sent to WhatsApp."""
from __future__ import annotations

from flask import flash, redirect, request
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm

from chatbot import playground
from chatbot.admin.panel import LoginRequired, services, signed_in_admin
from chatbot.errors import SenderBusy
from chatbot.models import AIConfiguration, Message
from chatbot.roles import Role
from chatbot.sanitizer import whole_number


class PlaygroundView(LoginRequired, BaseView):
    """Chat with the bot as a test user, with any stored AI configuration; nothing goes to WhatsApp."""

    role_needed = Role.ADMIN

    @expose("/")
    def index(self):
        username = signed_in_admin().username
        conversation = playground.current_conversation(username)
        transcript = (
            Message.select().where(Message.conversation == conversation).order_by(Message.id)
            if conversation is not None else []
        )
        active = AIConfiguration.active()
        return self.render(
            "chatbot_admin/playground.html",
            configurations=AIConfiguration.select().order_by(AIConfiguration.name),
            chosen=request.args.get("configuration", str(active.id) if active else ""),
            environment_model=services().config.ai_model,
            transcript=transcript,
            words=services().config.user_commands,
        )

    @expose("/send/", methods=("POST",))
    def send_view(self):
        choice = request.form.get("configuration", "")
        text = (request.form.get("text") or "").strip()
        chosen_id = whole_number(choice)
        configuration = AIConfiguration.get_or_none(AIConfiguration.id == chosen_id) if chosen_id else None
        if not SecureForm(request.form).validate():
            flash("The request expired; please try again.", "error")
        elif choice and configuration is None:
            flash("That AI configuration no longer exists.", "error")
        elif not text:
            flash("Write a message first.", "error")
        else:
            # An operator tool, not the webhook's path: the answer is awaited here, within AI_DEADLINE.
            try:
                playground.ask(services(), signed_in_admin().username, text, configuration)
            except SenderBusy:
                flash("Your playground is still answering another message (another tab?); this one is "
                      "answered with the next.", "error")
        return redirect(self.get_url(".index", configuration=choice))

    @expose("/reset/", methods=("POST",))
    def reset_view(self):
        if SecureForm(request.form).validate():
            playground.reset(signed_in_admin().username, services().context)
            flash("Playground reset: the next message starts a new conversation.", "success")
        return redirect(self.get_url(".index", configuration=request.form.get("configuration", "")))
