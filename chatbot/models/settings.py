"""What operators configure: AI configurations, WhatsApp numbers, access lists, opt-outs and settings."""
from __future__ import annotations

import math

from peewee import (
    BooleanField,
    CharField,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    TextField,
)

from chatbot.crypto import FieldCipher, SecretDecryptionError
from chatbot.models.base import BaseModel, utcnow
from chatbot.models.db import database
from chatbot.redact import mask_secret
from config import CONTENT_SID_SHAPE, MODEL_SLUG_SHAPE, WHATSAPP_ADDRESS_SHAPE, fallback_models_problem


class AccessEntry(BaseModel):
    """A number on the admin-kept allowlist or blocklist (ACCESS_MODE says which one applies)."""

    user_phone = CharField(max_length=64)
    kind = CharField(max_length=8)  # "allow" or "block"
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "access_entry"
        indexes = ((("user_phone", "kind"), True),)

    @classmethod
    def is_listed(cls, user_phone: str, kind: str) -> bool:
        """Say whether `user_phone` (E.164) is on the admin's `kind` list (one lookup in the unique index)."""
        return cls.select().where(cls.user_phone == user_phone, cls.kind == kind).exists()

    @classmethod
    def of_kind(cls, kind: str):
        """Select the admin's `kind` list, newest first."""
        return cls.select().where(cls.kind == kind).order_by(cls.created_at.desc(), cls.id.desc())

    @classmethod
    def add_many(cls, numbers: list[str], kind: str) -> list[str]:
        """Put E.164 `numbers` on the `kind` list; return those that were not on it already."""
        if not numbers:
            return []
        listed = {row.user_phone for row in cls.select(cls.user_phone).where(
            cls.user_phone.in_(numbers), cls.kind == kind)}
        added = [number for number in dict.fromkeys(numbers) if number not in listed]
        if added:
            cls.insert_many([{"user_phone": number, "kind": kind} for number in added]).on_conflict_ignore().execute()
        return added


class Setting(BaseModel):
    """A setting the operator changed at run time in the admin; it wins over the environment's."""

    key = CharField(max_length=64, unique=True)
    value = TextField()
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "setting"

    @classmethod
    def values(cls, *keys: str) -> dict[str, str]:
        """Return the operator's value for each of `keys` they set (one query); unset keys are absent."""
        return {row.key: row.value for row in cls.select(cls.key, cls.value).where(cls.key.in_(keys))}

    @classmethod
    def put(cls, key: str, value: str) -> None:
        """Set `key` to `value`, replacing the operator's earlier choice."""
        (cls.insert(key=key, value=value, updated_at=utcnow())
         .on_conflict(conflict_target=[cls.key], update={cls.value: value, cls.updated_at: utcnow()})
         .execute())

    @classmethod
    def forget(cls, *keys: str) -> None:
        """Drop the operator's values for `keys`: the environment's apply again."""
        cls.delete().where(cls.key.in_(keys)).execute()


# Numbers looked up per query (well under SQLite's limit on a query's parameters).
OPT_OUT_CHUNK = 500


class OptOut(BaseModel):
    """A sender who wrote STOP to one of the numbers: that number answers them nothing until they
    write START to it (WhatsApp opt-outs are per business number)."""

    user_phone = CharField(max_length=64)
    # The number written to, as conversations store it ("" the default number). None: every number,
    # for opt-outs recorded before they were per number (it cannot be known which number they meant).
    number = CharField(max_length=64, null=True)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "opt_out"
        indexes = ((("user_phone", "number"), True),)

    @classmethod
    def applies(cls, user_phone: str, number: str) -> bool:
        """Whether `user_phone` opted out of `number` (a conversation key), or of every number."""
        return cls.select().where(cls.user_phone == user_phone,
                                  (cls.number == number) | cls.number.is_null()).exists()

    @classmethod
    def among(cls, user_phones: list[str], number: str) -> set[str]:
        """Return which of `user_phones` opted out of `number` (a conversation key), or of every number."""
        found: set[str] = set()
        for start in range(0, len(user_phones), OPT_OUT_CHUNK):
            found |= {row.user_phone for row in cls.select(cls.user_phone).where(
                cls.user_phone.in_(user_phones[start:start + OPT_OUT_CHUNK]),
                (cls.number == number) | cls.number.is_null())}
        return found

    @classmethod
    def stop(cls, user_phone: str, number: str) -> None:
        """Record that `user_phone` opted out of `number`."""
        cls.insert(user_phone=user_phone, number=number).on_conflict_ignore().execute()

    @classmethod
    def start(cls, user_phone: str, number: str) -> None:
        """End `user_phone`'s opt-out of `number`. An opt-out of every number ends too: it was made
        when one STOP silenced all numbers, and one START answered again on all of them."""
        cls.delete().where(cls.user_phone == user_phone, (cls.number == number) | cls.number.is_null()).execute()
PROVIDERS = ("openrouter",)
# No model writes a million tokens in one answer; a larger number from a form is a typo (or an
# attack on the integer column), refused with the other field problems.
MAX_ANSWER_TOKENS = 1_000_000


class AIConfiguration(BaseModel):
    """An AI provider setup; the active one answers messages (else the environment's)."""

    name = CharField(max_length=100, unique=True)
    provider = CharField(max_length=32, default="openrouter")
    model_name = CharField(max_length=200)
    max_tokens = IntegerField(default=500)
    temperature = FloatField(default=0.7)
    system_prompt = TextField(default="")
    # Comma-separated OpenRouter slugs tried, in order, when the model above cannot answer.
    fallback_models = TextField(default="")
    is_active = BooleanField(default=False, index=True)
    # Append the knowledge sources an answer drew on ("Source: Returns policy").
    cite_sources = BooleanField(default=False)
    # The built-in tools, each offered to models that take tools unless switched off here.
    offer_request_human = BooleanField(default=True)
    offer_follow_ups = BooleanField(default=True)
    api_key_encrypted = TextField(null=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "ai_configuration"

    @classmethod
    def active(cls) -> AIConfiguration | None:
        """Return the active configuration, if one is active."""
        return cls.select().where(cls.is_active == True).order_by(cls.updated_at.desc()).first()  # noqa: E712

    @staticmethod
    def field_problem(name: str, value) -> str | None:
        """Say what is wrong with `value` for the field `name`, or None when it is valid: the one set
        of rules that the admin form, the CLI and saving all apply."""
        if name == "name" and not (value or "").strip():
            return "Name is required."
        if name == "provider" and value not in PROVIDERS:
            return "Provider must be OpenRouter."
        if name == "model_name" and not MODEL_SLUG_SHAPE.match(value or ""):
            return "Model must be an OpenRouter slug such as openai/gpt-4o-mini."
        if name == "fallback_models":
            return fallback_models_problem(value)
        if name == "max_tokens" and (isinstance(value, bool) or not isinstance(value, int)
                                     or not 1 <= value <= MAX_ANSWER_TOKENS):
            return f"Max tokens must be a whole number from 1 to {MAX_ANSWER_TOKENS:,}."
        if name == "temperature" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 2):
            return "Temperature must be a number from 0 to 2."
        return None

    def validation_errors(self) -> dict[str, str]:
        """Return a message per invalid field (empty when the configuration is valid)."""
        problems = {name: self.field_problem(name, getattr(self, name))
                    for name in ("name", "provider", "model_name", "max_tokens", "temperature")}
        return {name: problem for name, problem in problems.items() if problem}

    def set_api_key(self, plaintext: str, cipher: FieldCipher) -> None:
        """Store the API key encrypted; the plaintext never reaches the database."""
        self.api_key_encrypted = cipher.encrypt(plaintext) if plaintext else None

    def api_key(self, cipher: FieldCipher) -> str:
        """Return the decrypted API key ('' when none is stored)."""
        return cipher.decrypt(self.api_key_encrypted) if self.api_key_encrypted else ""

    def masked_key(self, cipher: FieldCipher) -> str:
        """Describe the stored key for display: at most `sk-or-…a1b2`, never the key."""
        if not self.api_key_encrypted:
            return "not set (uses OPENROUTER_API_KEY)"
        try:
            return mask_secret(self.api_key(cipher))
        except SecretDecryptionError:
            return "cannot decrypt (check FIELD_ENCRYPTION_KEY)"

    def activate(self) -> None:
        """Make this the only active configuration."""
        with database.atomic():
            AIConfiguration.update(is_active=False).where(AIConfiguration.id != self.id).execute()
            self.is_active = True
            self.updated_at = utcnow()
            self.save()
# A greeting is sent as its own WhatsApp message, before the first answer.
MAX_GREETING_CHARS = 1000


class WhatsAppNumber(BaseModel):
    """A WhatsApp number the assistant answers on, and how it answers there.

    The default number (TWILIO_WHATSAPP_NUMBER) needs no row: one is added only to give it a label,
    a greeting, its own AI configuration or template, or to switch it off.
    """

    address = CharField(max_length=64, unique=True)  # whatsapp:+E.164, as Twilio posts it in `To`
    label = CharField(max_length=100)
    # None: the active AI configuration (else the environment's settings), as on the default number.
    ai_configuration = ForeignKeyField(AIConfiguration, null=True, on_delete="SET NULL", backref="numbers")
    # Sent once, before the first answer a sender gets from this number ("" sends none).
    greeting = TextField(default="")
    # The approved template that carries a reply past WhatsApp's 24-hour window (None: such replies
    # are marked outside_window for the operator instead).
    template_sid = CharField(max_length=34, null=True)
    # The most this number's answers may cost in a calendar month, in USD (None: no cap of its own).
    monthly_budget = FloatField(null=True)
    is_active = BooleanField(default=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "whatsapp_number"

    @staticmethod
    def field_problem(name: str, value) -> str | None:
        """Say what is wrong with `value` for the field `name`, or None: the rules the admin and the CLI share."""
        if name == "address" and not WHATSAPP_ADDRESS_SHAPE.match(value or ""):
            return "Address must be whatsapp:+ followed by an E.164 number, e.g. whatsapp:+14155238886."
        if name == "label" and not (value or "").strip():
            return "Label is required."
        if name == "label" and len(value) > 100:
            return "Label must be at most 100 characters."
        if name == "greeting" and len(value or "") > MAX_GREETING_CHARS:
            return f"Greeting must be at most {MAX_GREETING_CHARS} characters."
        if name == "template_sid" and value and not CONTENT_SID_SHAPE.match(value):
            return "Template must be a Twilio Content SID: HX followed by 32 hex characters."
        if name == "monthly_budget" and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value <= 0):
            return "Monthly budget must be an amount in USD above 0, or empty for none."
        return None

    def validation_errors(self) -> dict[str, str]:
        """Return a message per invalid field (empty when the number is valid)."""
        problems = {name: self.field_problem(name, getattr(self, name))
                    for name in ("address", "label", "greeting", "template_sid", "monthly_budget")}
        return {name: problem for name, problem in problems.items() if problem}

