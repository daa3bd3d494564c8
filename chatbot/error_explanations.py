"""What Twilio's error codes and OpenRouter's HTTP statuses mean for the operator, and the fix."""
from __future__ import annotations

import re
from dataclasses import dataclass

# Twilio's refusal of a free-form message once the user's last one is more than 24 hours old.
OUTSIDE_WINDOW_CODE = 63016


@dataclass(frozen=True)
class Explanation:
    """One upstream error in plain words: what went wrong, what fixes it, and whether a retry can help."""

    source: str  # "Twilio error 63016", "OpenRouter HTTP 402": what to search for in their docs
    meaning: str
    fix: str
    # False when sending or asking again, unchanged, fails the same way whatever the operator does.
    retry_helps: bool = True

    def in_a_line(self) -> str:
        """`Twilio error 21211: The user's number is not a valid WhatsApp address. Check …`"""
        return f"{self.source}: {self.meaning} {self.fix}"


def _twilio(code: int, meaning: str, fix: str, retry_helps: bool = True) -> tuple[int, Explanation]:
    return code, Explanation(f"Twilio error {code}", meaning, fix, retry_helps)


def _openrouter(status: int, meaning: str, fix: str, retry_helps: bool = True) -> tuple[int, Explanation]:
    return status, Explanation(f"OpenRouter HTTP {status}", meaning, fix, retry_helps)


TWILIO_CODES = dict([
    _twilio(OUTSIDE_WINDOW_CODE, "Outside the 24-hour customer-service window.",
            "The user must write again before the bot can reply freely; configure an approved template "
            "(WINDOW_TEMPLATE_SID, or per number with .venv/bin/flask numbers update) to reach them meanwhile."),
    _twilio(20003, "Twilio refused the credentials.",
            "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must belong together; fix them, restart, then retry."),
    _twilio(20404, "Twilio does not know the resource asked for.",
            "Check TWILIO_WHATSAPP_NUMBER (or the number's address) is a sender of this Twilio account."),
    _twilio(21211, "The user's number is not a valid WhatsApp address.",
            "Check the webhook log for the From Twilio sent; nothing to retry.", retry_helps=False),
    _twilio(21408, "This Twilio account may not send to the user's region.",
            "Enable the region in Twilio's geo permissions, then retry."),
    _twilio(21610, "The user unsubscribed from this number (replied STOP).",
            "Nothing is delivered until they opt in again.", retry_helps=False),
    _twilio(21614, "The user's number cannot receive WhatsApp messages.",
            "Nothing to fix on this side.", retry_helps=False),
    _twilio(21617, "The reply was too long for one message.",
            "This should not happen (replies are split), so report it."),
    _twilio(63003, "The user's number cannot receive WhatsApp messages.",
            "Nothing to fix on this side.", retry_helps=False),
    _twilio(63024, "WhatsApp refused the recipient.",
            "Check the user's number in the webhook log; nothing to retry.", retry_helps=False),
    _twilio(63032, "WhatsApp does not deliver to this user for now (Meta limits messages to some users).",
            "Nothing to fix on this side; the user may write again later.", retry_helps=False),
    _twilio(63018, "WhatsApp's rate limit for this number was reached.", "Wait a few minutes, then retry."),
    _twilio(30003, "The user's phone was unreachable (off or out of coverage).", "Retry later."),
    _twilio(30005, "The user's number is unknown to the carrier or no longer exists.",
            "Nothing to fix on this side.", retry_helps=False),
    _twilio(30007, "The carrier filtered the message.", "Rephrase or retry later."),
    _twilio(30008, "The carrier or WhatsApp gave no reason for not delivering.", "Retry later."),
])
GENERIC_TWILIO_FIX = "Twilio will not deliver to this user until the cause is fixed; see Twilio's error code reference."

OPENROUTER_STATUSES = dict([
    _openrouter(400, "OpenRouter refused the request as malformed.",
                "Check the AI configuration's settings (max tokens, temperature, model), then retry."),
    _openrouter(401, "OpenRouter refused the API key.",
                "Set a valid key (OPENROUTER_API_KEY or the active AI configuration's), then retry."),
    _openrouter(402, "The OpenRouter account has no credits left.",
                "Add credits at openrouter.ai/settings/credits (or raise the key's limit), then retry."),
    _openrouter(403, "The model's moderation refused the question.",
                "Nothing to fix: asking again is refused the same way.", retry_helps=False),
    _openrouter(404, "OpenRouter does not offer the model.",
                "Fix the model slug in the AI configuration (its Test checks it), then retry."),
    _openrouter(408, "OpenRouter timed out waiting for the model.", "Usually passing: retry."),
    _openrouter(429, "OpenRouter or the model's provider is rate limiting this key.",
                "Wait a minute, then retry; set fallback models to ride it out."),
])
OPENROUTER_DOWN = Explanation("OpenRouter", "OpenRouter or the model's provider is down or overloaded.",
                              "Usually passing: retry in a few minutes; set fallback models to ride it out.")
OPENROUTER_UNREACHED = Explanation("OpenRouter", "OpenRouter did not answer in time, or could not be reached.",
                                   "Usually passing: retry; if it keeps happening, check the network and "
                                   "AI_DEADLINE.")
NOT_ANSWERED = Explanation("Worker", "No worker has answered the message for more than 5 minutes.",
                           "Check the dashboard's workers; start one (`.venv/bin/python worker.py`), then retry.")
UNDELIVERED_WITHOUT_CODE = Explanation("Twilio", "Twilio reported the reply undelivered without saying why.",
                                       "Retry; if it fails again, look the message up in Twilio's console.")

STORED_ERROR = re.compile(r"^(?P<upstream>openrouter|twilio):.*\((?P<details>[^()]*)\)\s*$", re.DOTALL)
DETAIL = re.compile(r"(?P<name>status|code)=(?P<value>\d+)")
UNANSWERED_WORDS = ("timed out", "could not connect", "no answer within")


def twilio_error(code: int | None) -> Explanation:
    """Explain a Twilio error code; an unlisted one gets the generic advice."""
    if code is None:
        return UNDELIVERED_WITHOUT_CODE
    return TWILIO_CODES.get(code) or Explanation(f"Twilio error {code}", "Twilio did not deliver the reply.",
                                                 GENERIC_TWILIO_FIX)


def openrouter_error(status: int | None) -> Explanation | None:
    """Explain an OpenRouter HTTP status, or None when it is not an error status."""
    if status in OPENROUTER_STATUSES:
        return OPENROUTER_STATUSES[status]
    if status is not None and status >= 500:
        return OPENROUTER_DOWN
    return None


def explain_stored_error(error: str | None) -> Explanation | None:
    """Explain an error as a message stores it (`openrouter: No credits (status=402, code=402,
    permanent)`), or None when there is nothing known to say about it."""
    match = STORED_ERROR.match(error or "")
    if match is None:
        return None
    details = {detail["name"]: int(detail["value"]) for detail in DETAIL.finditer(match["details"])}
    if match["upstream"] == "twilio":
        return twilio_error(details["code"]) if "code" in details else None
    explanation = openrouter_error(details.get("status"))
    if explanation is None and any(words in error for words in UNANSWERED_WORDS):
        return OPENROUTER_UNREACHED
    return explanation
