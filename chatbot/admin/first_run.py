"""The dashboard's first-run checklist: what a fresh deployment still needs before a WhatsApp customer
gets an answer, in the order an owner does it. Each step ticks itself from what the service has
seen (a setting present, a signed request arrived, a receipt, a message stored); the card is gone
once every step is done.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import url_for

from chatbot.admin.panel import may_do, services
from chatbot.models import AIConfiguration, Message, Origin, ReplyPart, Role, WebhookLog, WhatsAppNumber
from chatbot.roles import Role as TeamRole
from chatbot.web import WEBHOOK_PATH
from chatbot.whatsapp import STATUS_CALLBACK_PATH

# Hosts Twilio can never call: the service is reached only from this machine.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
SET_IT = ("set PUBLIC_BASE_URL to the https origin Twilio can reach (your deployment's address, or a tunnel's "
          "such as ngrok http 5000), e.g. PUBLIC_BASE_URL=https://my-bot.example.com in .env or your host's "
          "config variables, and restart")


@dataclass(frozen=True)
class Step:
    """One thing to do before the first customer is answered."""

    key: str
    title: str
    done: bool
    # What to do, in plain words, while it is not done.
    how: str = ""
    # A URL to paste into Twilio (with a copy button); "" when none can be built yet.
    url: str = ""
    # A page of the panel where it is done, and the words of its link.
    link: str = ""
    link_text: str = ""
    # Something seen that stands in the way (a signature that does not match, an unreachable origin).
    warning: str = ""


def steps() -> list[Step]:
    """The checklist, or [] once every step is done."""
    config = services().config
    base = config.public_base_url.rstrip("/")
    checklist = [twilio_step(config), ai_step(config), webhook_step(base), status_step(base), first_message_step()]
    return [] if all(step.done for step in checklist) else checklist


def twilio_step(config) -> Step:
    missing = [name for name in config.missing_for_whatsapp()
               if not (name == "TWILIO_WHATSAPP_NUMBER" and WhatsAppNumber.select().exists())]
    return Step("twilio", "Twilio settings", not missing,
                how=(f"Set {', '.join(missing)} in .env (or your host's config variables) and restart: the Account "
                     "SID and Auth Token are on the Twilio Console's home page, the number is your WhatsApp sender "
                     "(the sandbox's is whatsapp:+14155238886). docs/setup.md walks through it."))


def ai_step(config) -> Step:
    active = AIConfiguration.active()
    done = bool(config.openrouter_api_key) or (active is not None and bool(active.api_key_encrypted))
    link, link_text = "", ""
    if may_do(TeamRole.ADMIN):
        link, link_text = url_for("aiconfiguration.create_view"), "Add an AI configuration"
    return Step("ai", "An OpenRouter key or an AI configuration", done,
                how=("Set OPENROUTER_API_KEY (create one at https://openrouter.ai/keys) and restart, or give an AI "
                     "configuration its own key and make it active."), link=link, link_text=link_text)


def unreachable(base: str) -> str:
    """Say why Twilio cannot call `base`, or "" when it can."""
    parts = urlsplit(base)
    if parts.hostname in LOOPBACK_HOSTS:
        return f"PUBLIC_BASE_URL is {base}, an address on this machine that Twilio cannot reach: {SET_IT}."
    if parts.scheme != "https":
        return f"PUBLIC_BASE_URL is {base}: Twilio needs https; {SET_IT}."
    return ""


def webhook_step(base: str) -> Step:
    signed = WebhookLog.select().where(WebhookLog.path == WEBHOOK_PATH, WebhookLog.signature_valid == True)  # noqa: E712
    # A stored customer message proves it too, after the webhook log's entries are gone (they are kept 14 days).
    done = signed.exists() or customer_message_seen()
    where = ("In the Twilio Console, set “When a message comes in” to this URL, method POST (the sandbox: "
             "Messaging → Try it out → Send a WhatsApp message → Sandbox settings; your own number: its WhatsApp "
             "sender).")
    if not base:
        return Step("webhook", "The webhook URL in Twilio", done,
                    how=f"PUBLIC_BASE_URL is not set, so the URL to give Twilio cannot be shown: {SET_IT}.")
    refused = (WebhookLog.select().where(WebhookLog.path == WEBHOOK_PATH, WebhookLog.verdict == "bad_signature")
               .exists())
    warning = unreachable(base) or (
        "" if done or not refused else
        "Requests reach the service but their signature does not match: PUBLIC_BASE_URL must be exactly the origin "
        "(scheme, host and port) of the URL set in Twilio. The webhook log shows the URL each was checked against.")
    return Step("webhook", "The webhook URL in Twilio", done, how=where, url=base + WEBHOOK_PATH, warning=warning)


def status_step(base: str) -> Step:
    receipts = WebhookLog.select().where(WebhookLog.verdict == "status_callback")
    # A part past "queued" was moved by a receipt, and stays so after the log's entries are gone.
    done = receipts.exists() or ReplyPart.select().where(ReplyPart.status != "queued").exists()
    how = ("Set “Status callback URL” beside it to this URL, method POST: the delivery ticks (sent, delivered, read) "
           "and the undelivered replies on Problems come from Twilio's receipts. It ticks with the first receipt.")
    if not base:
        return Step("status", "The status callback URL in Twilio", done,
                    how=f"PUBLIC_BASE_URL is not set, so the URL cannot be shown: {SET_IT}.")
    return Step("status", "The status callback URL in Twilio", done, how=how, url=base + STATUS_CALLBACK_PATH)


def customer_message_seen() -> bool:
    return (Message.select()
            .where(Message.role == Role.USER.value, Message.origin == Origin.WHATSAPP.value)
            .exists())


def first_message_step() -> Step:
    return Step("first-message", "A first message from WhatsApp", customer_message_seen(),
                how=("Send “Hello” to your number from WhatsApp (for the sandbox, join it first by sending it the "
                     "code Twilio shows). The Playground tries the assistant without WhatsApp."))
