"""The operators who may log in to the admin panel."""
from __future__ import annotations

import hashlib

from peewee import (
    CharField,
    DateTimeField,
    IntegerField,
    TextField,
)
from werkzeug.security import check_password_hash, generate_password_hash

from chatbot.models.base import BaseModel, JSONField, utcnow


class AdminUser(BaseModel):
    """An operator who may log in to the admin panel."""

    username = CharField(max_length=80, unique=True)
    password_hash = CharField(max_length=255)
    created_at = DateTimeField(default=utcnow)
    last_login_at = DateTimeField(null=True)
    # viewer, agent, admin or owner (chatbot/roles.py); users from before roles are owners.
    role = CharField(max_length=16, default="owner")
    # The TOTP secret (base32), encrypted with FIELD_ENCRYPTION_KEY; set at enrolment, confirmed
    # (two-factor login on) once `totp_enabled_at` is set.
    totp_secret_encrypted = TextField(null=True)
    totp_enabled_at = DateTimeField(null=True)
    # The time step of the last code accepted: a code is good once.
    totp_last_step = IntegerField(default=0)
    # Hashes of the unused recovery codes.
    recovery_codes = JSONField(default=list)

    class Meta:
        table_name = "admin_user"

    def set_password(self, password: str) -> None:
        """Store a salted hash of `password` (werkzeug's scrypt)."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    @property
    def has_two_factor(self) -> bool:
        return self.totp_enabled_at is not None

    def session_stamp(self) -> str:
        """A value that changes with the password and the role, so a reset or a role change ends existing sessions."""
        return hashlib.sha256(f"{self.password_hash}\0{self.role}".encode()).hexdigest()[:16]


class AuditEvent(BaseModel):
    """Who did what in the admin (or from the CLI), when, from where: never a secret or a full number."""

    at = DateTimeField(default=utcnow, index=True)
    # The admin's username; "" for an unknown one (a failed login names what was typed in `target`).
    actor = CharField(max_length=80, default="", index=True)
    # The client's address; "cli" for a command run on the server.
    address = CharField(max_length=64, default="")
    # What was done: "login", "login_failed", "2fa_enabled", "user_added", "role_changed", "POST /admin/…".
    action = CharField(max_length=64, index=True)
    # What it was done to: a user, a configuration, a conversation id, a masked number.
    target = CharField(max_length=255, default="")
    detail = TextField(default="")

    class Meta:
        table_name = "audit_event"
