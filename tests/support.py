"""Servers of a run's own and Twilio-shaped requests, shared by the tests and the bench scripts."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg2
from redis import Redis
from rq import SimpleWorker
from twilio.request_validator import RequestValidator

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
BOT_NUMBER = "whatsapp:+14155238886"
LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
START_TIMEOUT = 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class BurstWorker(SimpleWorker):
    """RQ's non-forking worker without its pub/sub listener: with rq 3.0 and redis-py 8.2 a worker's
    unsubscribe() can join a listener blocked for 60 s in get_message (rq/rq#1613). Ours has none either."""

    def subscribe(self):
        """Listen to no stop or kill commands: a test's burst worker ends by itself."""


# --- Redis -------------------------------------------------------------------------------------

class RedisServer:
    """A redis-server of its own on a free loopback port, without persistence; it may stop and start again."""

    def __init__(self, directory: Path, logfile: Path | None = None):
        self.directory = Path(directory)
        self.logfile = Path(logfile) if logfile else self.directory / "redis-server.log"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        """Start redis-server on this server's port and wait until it answers PING."""
        # Its own session: a Ctrl-C meant for the tests or a bench must not take Redis down before
        # they have stopped what uses it.
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--logfile", str(self.logfile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return self
            except Exception:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start; its log:\n{tail(self.logfile)}")

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(none)"


# --- Postgres ----------------------------------------------------------------------------------

def postgres_answers(url: str) -> bool:
    try:
        psycopg2.connect(url, connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def running_postgres_url() -> str | None:
    """The server the tests use: TEST_POSTGRES_URL, else the local one when it answers; None when neither."""
    # An explicit server is never replaced: starting another would hide that it is down.
    if os.environ.get("TEST_POSTGRES_URL"):
        return os.environ["TEST_POSTGRES_URL"]
    return LOCAL_POSTGRES_URL if postgres_answers(LOCAL_POSTGRES_URL) else None


def postgres_binary(name: str) -> str | None:
    """Find a Postgres server program on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda path: [int(part) for part in path.split("/")[4].split(".") if part.isdigit()])
    return versions[-1] if versions else None


def postgres_owner() -> list[str]:
    """The command prefix that runs initdb and pg_ctl as a user they accept: they refuse to run as root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("initdb refuses to run as root and there is no 'postgres' user to run it as "
                           "(Debian's postgresql package creates one)") from None
    if not shutil.which("runuser"):
        raise RuntimeError("initdb refuses to run as root and runuser (util-linux) is missing")
    return ["runuser", "-u", "postgres", "--"]


class PrivatePostgres:
    """A Postgres cluster of its own in a temp folder on a free loopback port: trust auth, no fsync."""

    def __init__(self):
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.directory: Path | None = None
        self.as_owner: list[str] = []

    def start(self) -> PrivatePostgres:
        """Create the cluster with initdb and start it with pg_ctl; both must be installed."""
        initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
        if not (initdb and pg_ctl):
            raise RuntimeError("initdb and pg_ctl are missing: install Debian's postgresql package")
        self.as_owner = postgres_owner()
        self.directory = Path(tempfile.mkdtemp(prefix="chatbot-postgres-"))
        if self.as_owner:
            owner = pwd.getpwnam("postgres")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        data, log = self.directory / "data", self.directory / "postgres.log"
        self._run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "--no-locale",
                  "--encoding=UTF8")
        # The socket goes in our folder: the default /var/run/postgresql may be missing or not ours.
        self._run(pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", str(START_TIMEOUT), "-o",
                  f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
                  log=log)
        return self

    def stop(self) -> None:
        if self.directory is None:
            return
        if (self.directory / "data" / "postmaster.pid").exists():
            self._run(postgres_binary("pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def _run(self, *command: str, log: Path | None = None) -> None:
        result = subprocess.run([*self.as_owner, *command], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            server_log = f"\nserver log:\n{tail(log)}" if log else ""
            raise RuntimeError(f"{Path(command[0]).name} failed:\n{result.stdout}{result.stderr}{server_log}")


@contextmanager
def throwaway_postgres_database(admin_url: str, prefix: str):
    """Create an empty database on the server at `admin_url`; yield its URL; drop it, connections and all."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(admin_url, connect_timeout=5)
    admin.autocommit = True
    try:
        admin.cursor().execute(f"CREATE DATABASE {name}")
        try:
            yield admin_url.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()


# --- Twilio ------------------------------------------------------------------------------------

def sign(url: str, params: dict, token: str = AUTH_TOKEN) -> str:
    """Sign a webhook the way Twilio does."""
    return RequestValidator(token).compute_signature(url, params)


def inbound_form(body: str = "Hello", sender: str = "whatsapp:+15550001111", sid: str | None = None, **extra):
    """A real-shaped Twilio WhatsApp inbound form."""
    sid = sid or "SM" + uuid.uuid4().hex
    return {
        "SmsMessageSid": sid, "NumMedia": "0", "ProfileName": "Ada", "SmsSid": sid,
        "WaId": sender.split("+")[-1], "SmsStatus": "received", "Body": body, "To": BOT_NUMBER,
        "NumSegments": "1", "ReferralNumMedia": "0", "MessageSid": sid, "AccountSid": ACCOUNT_SID,
        "From": sender, "ApiVersion": "2010-04-01", **extra,
    }


def conversation_for(phone: str, profile_name: str = "", ttl: int | None = None):
    """The sender's active conversation, started when there is none (as the webhook does)."""
    from chatbot.models import Conversation

    return Conversation.get_by_id(Conversation.resume_or_start_id(phone, profile_name, ttl))
