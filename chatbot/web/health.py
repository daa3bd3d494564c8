"""GET /health: whether the database and Redis answer."""
from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify
from peewee import PeeweeException
from redis.exceptions import RedisError

from chatbot.models.db import database
from chatbot.web import HEALTH_PATH

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get(HEALTH_PATH)
def health():
    """Report whether the database and Redis are reachable."""
    services = current_app.extensions["chatbot"]
    checks = {"database": _database_ok(), "redis": _redis_ok(services.redis)}
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

