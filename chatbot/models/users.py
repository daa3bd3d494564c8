"""The operators who may log in to the admin panel."""
from __future__ import annotations

import hashlib

from peewee import (
    CharField,
    DateTimeField,
)
from werkzeug.security import check_password_hash, generate_password_hash

from chatbot.models.base import BaseModel, utcnow


class AdminUser(BaseModel):
    """An operator who may log in to the admin panel."""

    username = CharField(max_length=80, unique=True)
    password_hash = CharField(max_length=255)
    created_at = DateTimeField(default=utcnow)
    last_login_at = DateTimeField(null=True)

    class Meta:
        table_name = "admin_user"

    def set_password(self, password: str) -> None:
        """Store a salted hash of `password` (werkzeug's scrypt)."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def session_stamp(self) -> str:
        """A value that changes with the password, so a reset ends existing sessions."""
        return hashlib.sha256(self.password_hash.encode()).hexdigest()[:16]

