"""Twilio's inbound message form, read into an InboundMessage."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from flask import request

from chatbot.sanitizer import clean_text, is_whatsapp_address

log = logging.getLogger(__name__)

SID_SHAPE = re.compile(r"^[A-Za-z]{2}[0-9a-fA-F]{32}$")
MAX_MEDIA = 10


class MalformedWebhook(ValueError):
    """The form does not describe an inbound WhatsApp message."""


@dataclass(frozen=True)
class InboundMessage:
    """The fields of Twilio's inbound message form that the assistant uses."""

    sid: str
    sender: str
    recipient: str
    body: str
    profile_name: str = ""
    wa_id: str = ""
    media: list[dict] = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        """Return what to keep beside the text of the message."""
        details = {"to": self.recipient, "wa_id": self.wa_id, "profile_name": self.profile_name}
        if self.media:
            details["media"] = self.media
        details.update(self.extras)
        return details


def parse_inbound(form, max_chars: int | None = None) -> InboundMessage:
    """Read Twilio's form; unknown fields are ignored, missing or malformed essentials are an error."""
    sid = (form.get("MessageSid") or form.get("SmsMessageSid") or "").strip()
    sender = (form.get("From") or "").strip()
    recipient = (form.get("To") or "").strip()
    problems = []
    if not sid:
        problems.append("MessageSid is missing")
    elif not SID_SHAPE.match(sid):
        problems.append("MessageSid is not a Twilio SID")
    for name, value in (("From", sender), ("To", recipient)):
        if not value:
            problems.append(f"{name} is missing")
        elif not is_whatsapp_address(value):
            problems.append(f"{name} is not a whatsapp:+E.164 address")
    if problems:
        raise MalformedWebhook("; ".join(problems))
    body = clean_text(form.get("Body") or "", max_chars)
    media = []
    for index in range(MAX_MEDIA):
        url = form.get(f"MediaUrl{index}")
        if url:
            media.append({"url": url, "content_type": form.get(f"MediaContentType{index}", "")})
    extras = {
        name: clean_text(form[name], 500).text
        for name in ("Latitude", "Longitude", "ButtonPayload", "OriginalRepliedMessageSid")
        if form.get(name)
    }
    if body.trimmed:
        extras["trimmed"] = True
    return InboundMessage(
        sid=sid,
        sender=sender,
        recipient=recipient,
        body=body.text,
        profile_name=clean_text(form.get("ProfileName") or "", 255).text.strip(),
        wa_id=(form.get("WaId") or "").strip()[:32],
        media=media,
        extras=extras,
    )


def read_fields():
    """The webhook's fields: the form, or the JSON object of Twilio's bodySHA256 variant."""
    if "bodySHA256" not in request.args:
        # A plain dict holding each field's first value, as MultiDict.get gives it: the MultiDict
        # raises and catches an exception for every absent field asked for, a dozen per message.
        return request.form.to_dict()
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise MalformedWebhook("body is not a JSON object")
    return {name: value if isinstance(value, str) else json.dumps(value) for name, value in payload.items()}

