"""GET /health: whether the database and Redis answer, and whether an SQLite writer gets its turn."""
from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify
from peewee import PeeweeException
from redis.exceptions import RedisError

from chatbot.models.db import database, writer_turn_within
from chatbot.web import HEALTH_PATH

log = logging.getLogger(__name__)

# The longest the health check waits for an SQLite writer's turn: a turn held longer is reported (a
# platform's probe gives up after a few seconds), though a webhook would still wait SQLITE_WRITER_WAIT_SECONDS.
WRITER_PROBE_SECONDS = 2.0

bp = Blueprint("health", __name__)


@bp.get(HEALTH_PATH)
def health():
    """Report whether the database and Redis are reachable."""
    services = current_app.extensions["chatbot"]
    checks = {"database": _database_ok(), "redis": _redis_ok(services.redis)}
    writers = _writer_turn_ok(min(WRITER_PROBE_SECONDS, services.config.sqlite_writer_wait))
    if writers is not None:
        checks["sqlite_writer_turn"] = writers
    healthy = all(checks.values())
    body = {"status": "ok" if healthy else "unavailable", **checks}
    return jsonify(body), 200 if healthy else 503


def _database_ok() -> bool:
    try:
        database.execute_sql("SELECT 1")
        return True
    except PeeweeException:
        log.exception("health: database unreachable")
        return False


def _redis_ok(redis) -> bool:
    try:
        return bool(redis.ping())
    except RedisError:
        log.exception("health: redis unreachable")
        return False



def _writer_turn_ok(seconds: float) -> bool | None:
    """Take an SQLite writer's turn and let it go: a turn nobody gets within `seconds` is held too
    long (a stuck process, a long transaction), and every write waits behind it."""
    free = writer_turn_within(seconds)
    if free is False:
        log.error("health: no SQLite writer turn within %.1f s: a process holds the writer lock too long", seconds)
    return free
