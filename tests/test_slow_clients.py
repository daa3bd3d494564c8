"""A few clients that send their request slowly must not take the web process down (gunicorn.conf.py)."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from tests.conftest import PROJECT_DIR, WEBHOOK_URL, free_port, inbound_form, sign

SLOW_CLIENTS = 4
DRIP_INTERVAL = 0.5
# Twilio gives up on a webhook after 15 s; /health probes usually allow a few seconds.
ANSWER_WITHIN = 2.0
PROBES = 4
PROBE_INTERVAL = 0.5


def header_drip(port: int, stop: threading.Event) -> None:
    """Open a request and send one header line every DRIP_INTERVAL, never finishing the headers."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: bot.example.com\r\n")
        line = 0
        while not stop.wait(DRIP_INTERVAL):
            line += 1
            connection.sendall(f"X-Drip-{line}: 1\r\n".encode())


def body_drip(port: int, stop: threading.Event) -> None:
    """Send a webhook's headers announcing a large body, then a few bytes every DRIP_INTERVAL."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"POST /whatsapp/webhook HTTP/1.1\r\nHost: bot.example.com\r\n"
                           b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\n\r\n")
        while not stop.wait(DRIP_INTERVAL):
            connection.sendall(b"Body=a")


def timed(request) -> tuple[float, int | str]:
    """Return how long `request` took and its status (or the error that ended it)."""
    started = time.monotonic()
    try:
        status = request()
    except OSError as error:
        status = type(error).__name__
    return time.monotonic() - started, status


def get_health(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_WITHIN)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status
    finally:
        connection.close()


def post_signed_webhook(port: int) -> int:
    form = inbound_form("still there?", sender="whatsapp:+15550001111")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_WITHIN)
    try:
        connection.request("POST", "/whatsapp/webhook", urllib.parse.urlencode(form), {
            "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sign(WEBHOOK_URL, form)})
        return connection.getresponse().status
    finally:
        connection.close()


def wait_until_healthy(port: int, web: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert web.poll() is None, "gunicorn exited"
        if timed(lambda: get_health(port))[1] == 200:
            return
        time.sleep(0.2)
    raise AssertionError("gunicorn did not answer /health")


@pytest.fixture
def gunicorn_port(env, config, services, tmp_path):
    """The web process as deployed: gunicorn with gunicorn.conf.py and its default workers and threads."""
    port = free_port()
    process_env = {**os.environ, **env, "DATABASE_URL": config.database_url}
    for name in ("WEB_CONCURRENCY", "GUNICORN_THREADS"):
        process_env.pop(name, None)
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
        cwd=PROJECT_DIR, env=process_env, stdout=(tmp_path / "gunicorn.log").open("w"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_until_healthy(port, web)
        yield port
    finally:
        os.killpg(web.pid, signal.SIGKILL)
        web.wait()


@pytest.mark.parametrize("drip", [header_drip, body_drip], ids=["headers", "body"])
def test_health_and_webhooks_answer_while_clients_drip_their_requests(gunicorn_port, drip):
    stop = threading.Event()
    drippers = [threading.Thread(target=drip, args=(gunicorn_port, stop), daemon=True)
                for _ in range(SLOW_CLIENTS)]
    for dripper in drippers:
        dripper.start()
    answers = []
    try:
        # Let every slow client be accepted and start its request before probing.
        time.sleep(DRIP_INTERVAL)
        for _ in range(PROBES):
            answers.append(("health", *timed(lambda: get_health(gunicorn_port))))
            answers.append(("webhook", *timed(lambda: post_signed_webhook(gunicorn_port))))
            time.sleep(PROBE_INTERVAL)
    finally:
        stop.set()
    slow_or_failed = [(what, round(seconds, 2), status) for what, seconds, status in answers
                      if status != 200 or seconds > ANSWER_WITHIN]
    assert slow_or_failed == []
