"""What every model shares: the clock, the enums, JSON fields, and statements prepared once."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache

from peewee import (
    Model,
    TextField,
)

from chatbot.models.db import database


def utcnow() -> datetime:
    """Return the current UTC time without tzinfo (stored the same on SQLite and Postgres)."""
    return datetime.now(UTC).replace(tzinfo=None)


class JSONField(TextField):
    """JSON stored as text, portable across SQLite and Postgres."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class Origin(StrEnum):
    """Where a user message came from: only WhatsApp messages are ever answered through Twilio."""

    WHATSAPP = "whatsapp"
    CONSOLE = "console"
    PLAYGROUND = "playground"  # an operator trying the bot in the admin; never sent, never counted


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class Status(StrEnum):
    """Where a message is in its life: inbound ones get answered, outbound ones get sent."""

    PENDING = "pending"
    ANSWERED = "answered"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"
    UNSENT = "unsent"
    SENT = "sent"
    SEND_FAILED = "send_failed"
    SUPERSEDED = "superseded"  # a fallback reply replaced by a real answer after `flask retry-failed`
    WAITING = "waiting"  # a user message held for a person: an operator has taken the conversation over
    OPTED_OUT = "opted_out"  # a user message from a sender who wrote STOP: stored, never answered
    NOT_ALLOWED = "not_allowed"  # a user message from a sender the access list keeps out
    OVER_BUDGET = "over_budget"  # a user message not sent to the AI: a spending cap was reached
    # A reply WhatsApp would refuse: the user's last message is more than 24 hours old and no
    # approved template is configured for the number. Kept for the operator, never retried.
    OUTSIDE_WINDOW = "outside_window"


class Prepared:
    """A statement whose SQL peewee writes once per kind of database; each run only binds values.

    For the webhook's path, where peewee took longer to write each statement than SQLite took to
    run it. `build(*values)` returns the peewee query, and `fields[i].db_value` converts
    `values[i]`: one value per query parameter, in the order they appear in its SQL.
    """

    def __init__(self, build, fields):
        self.build = build
        self.fields = tuple(fields)
        self._sql = {}

    def bind(self, *values) -> tuple[str, list]:
        """Return the SQL and parameters that `build(*values).sql()` would."""
        kind = type(database.obj)
        sql = self._sql.get(kind)
        if sql is None:
            sql = self._sql[kind] = self.build(*values).sql()[0]
        return sql, [field.db_value(value) for field, value in zip(self.fields, values, strict=True)]

    def execute(self, *values):
        """Run the statement and return the database cursor."""
        return database.execute_sql(*self.bind(*values))


class BaseModel(Model):
    class Meta:
        database = database

    @classmethod
    def insert_row(cls, **values) -> int:
        """Do what `insert(**values).execute()` does, defaults included, without rewriting the SQL."""
        row = {field.name: default() if callable(default) else default
               for field, default in cls._meta.defaults.items() if field.name not in values}
        row.update(values)
        names = tuple(name for name in cls._meta.sorted_field_names if name in row)
        cursor = _prepared_insert(cls, names).execute(*(row[name] for name in names))
        return cursor.fetchone()[0] if database.returning_clause else cursor.lastrowid


@cache
def _prepared_insert(model: type[BaseModel], names: tuple[str, ...]) -> Prepared:
    # Peewee orders an INSERT's columns as the model declares them, which `names` already follows.
    return Prepared(lambda *values: model.insert(**dict(zip(names, values, strict=True))),
                    [model._meta.fields[name] for name in names])
# Rows deleted per transaction by the retention cleanup, so no lock is held for long.
DELETE_BATCH = 500

