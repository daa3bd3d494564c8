"""Wait until the database and Redis answer, or fail after a bound: `python scripts/wait_for_services.py`.

docker-entrypoint.sh runs this before migrating. DATABASE_URL and REDIS_URL are read through
config.py, so they are parsed exactly as the app parses them. Exit status: 0 when both answer,
1 when one did not answer in time, 2 when the settings themselves are invalid.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from peewee import PeeweeException  # noqa: E402
from playhouse.db_url import connect  # noqa: E402
from redis import Redis  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402

from config import Config, ConfigError  # noqa: E402

RETRY_PAUSE = 1.0
MIN_ATTEMPT_TIMEOUT = 2  # libpq treats a connect_timeout under 2 s as 2 s
MAX_ATTEMPT_TIMEOUT = 5


def say(text: str, stream=sys.stdout) -> None:
    print(f"[wait] {text}", file=stream, flush=True)


def redacted(url: str) -> str:
    """Return `url` with any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def ping_database(url: str, timeout: float) -> None:
    """Open one connection to the database at `url` and run `SELECT 1`."""
    if url.startswith("sqlite"):
        path = urlsplit(url).path
        if path and path != "/:memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        database = connect(url)
    else:
        attempt_timeout = int(min(max(timeout, MIN_ATTEMPT_TIMEOUT), MAX_ATTEMPT_TIMEOUT))
        database = connect(url, connect_timeout=attempt_timeout)
    try:
        database.connect()
        database.execute_sql("SELECT 1")
    finally:
        if not database.is_closed():
            database.close()


def ping_redis(url: str, timeout: float, options: dict | None = None) -> None:
    """Send PING to the Redis at `url`."""
    attempt_timeout = min(max(timeout, 1.0), MAX_ATTEMPT_TIMEOUT)
    client = Redis.from_url(url, socket_connect_timeout=attempt_timeout, socket_timeout=attempt_timeout,
                            **(options or {}))
    try:
        client.ping()
    finally:
        client.close()


def wait_for(name: str, variable: str, url: str, ping: Callable[[str, float], None], errors: tuple,
             deadline: float, bound: float) -> bool:
    """Ping until it answers or `deadline` passes; say what happened."""
    first_failure = True
    while True:
        remaining = deadline - time.monotonic()
        try:
            ping(url, max(remaining, 0.1))
            say(f"{name} is reachable at {redacted(url)}")
            return True
        except errors as exc:
            last_error = " ".join(str(exc).split()) or exc.__class__.__name__
        if first_failure:
            say(f"waiting for {name} at {redacted(url)} ({last_error})")
            first_failure = False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            say(f"error: {name} at {redacted(url)} did not answer within {bound:g}s "
                f"(last error: {last_error}). Check {variable} and that the server is running.",
                stream=sys.stderr)
            return False
        time.sleep(min(RETRY_PAUSE, remaining))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Wait until the database and Redis answer.")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for both together before giving up (default 60)")
    args = parser.parse_args(argv)
    try:
        config = Config.from_env()
    except ConfigError as error:
        say(str(error), stream=sys.stderr)
        return 2
    deadline = time.monotonic() + args.timeout
    for name, variable, url, ping, errors in (
        ("the database", "DATABASE_URL", config.database_url, ping_database, (PeeweeException, OSError)),
        ("Redis", "REDIS_URL", config.redis_url,
         lambda url, timeout: ping_redis(url, timeout, config.redis_options()), (RedisError, OSError)),
    ):
        if not wait_for(name, variable, url, ping, errors, deadline, args.timeout):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
