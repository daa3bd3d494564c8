"""scripts/run_local.py (`make run`): everything up with one command, and nothing left after Ctrl-C."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from redis import Redis

from tests.conftest import PROJECT_DIR, WEBHOOK_URL, free_port, inbound_form, sign

ADA = "whatsapp:+15550001111"


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, pending = set(), [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout: float = 30.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class LocalRun:
    """`make run` as a subprocess in its own process group, as a terminal would start it."""

    def __init__(self, env: dict, tmp_path: Path):
        self.port = free_port()
        self.env_file = tmp_path / ".env"
        self.log = tmp_path / "run.log"
        run_env = {**os.environ, **env, "PORT": str(self.port), "RUN_LOCAL_ENV_FILE": str(self.env_file),
                   "RUN_LOCAL_INSTANCE_DIR": str(tmp_path / "instance"),
                   "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}"}
        # A fresh clone: no secrets anywhere yet.
        run_env.pop("SECRET_KEY", None)
        run_env.pop("FIELD_ENCRYPTION_KEY", None)
        self.process = subprocess.Popen([sys.executable, "scripts/run_local.py"], cwd=PROJECT_DIR, env=run_env,
                                        stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def healthy(self) -> bool:
        assert self.process.poll() is None, self.output
        try:
            return requests.get(self.url("/health"), timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False  # not up yet, or a busy machine answering slowly: asked again

    def ctrl_c(self) -> int:
        """Send SIGINT to the whole foreground group, as Ctrl-C in a terminal does; return the exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(30)

    def kill(self) -> None:
        """Kill the run and every process it started: each runs in a session of its own, and a worker
        left behind would take later tests' jobs from their Redis."""
        if self.process.poll() is None:
            for pid in descendants(self.process.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def local_run(env, redis, tmp_path):
    runs = []

    def start(**changes) -> LocalRun:
        run = LocalRun({**env, **changes}, tmp_path)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill()


def test_make_run_answers_webhooks_and_stops_everything_on_ctrl_c(local_run, fake_openrouter, fake_twilio):
    project_env = PROJECT_DIR / ".env"
    project_env_before = project_env.read_bytes() if project_env.exists() else None
    run = local_run()

    wait_for(run.healthy, what="/health")
    form = inbound_form("Hello from make run", sender=ADA)
    response = requests.post(run.url("/whatsapp/webhook"), data=form, timeout=10,
                             headers={"X-Twilio-Signature": sign(WEBHOOK_URL, form)})
    assert response.status_code == 200
    wait_for(lambda: fake_twilio.sent, what="the worker's reply")
    assert fake_twilio.sent[0]["Body"] == "Answer to: Hello from make run"
    processes = descendants(run.process.pid)
    assert len(processes) >= 4  # web (and its worker), worker, scheduler

    assert run.ctrl_c() == 0
    assert [pid for pid in processes if alive(pid)] == []

    output = run.output
    assert "wrote development SECRET_KEY and FIELD_ENCRYPTION_KEY" in output
    assert f"webhook URL: http://127.0.0.1:{run.port}/whatsapp/webhook" in output
    assert f"admin: http://127.0.0.1:{run.port}/admin" in output
    assert "warning:" not in output
    written = run.env_file.read_text()
    assert "SECRET_KEY=" in written and "FIELD_ENCRYPTION_KEY=" in written
    assert (project_env.read_bytes() if project_env.exists() else None) == project_env_before


def test_make_run_warns_about_missing_whatsapp_settings_without_failing(local_run):
    run = local_run(TWILIO_ACCOUNT_SID="", TWILIO_AUTH_TOKEN="", OPENROUTER_API_KEY="")

    wait_for(lambda: "press Ctrl-C to stop" in run.output, what="the start-up summary")
    processes = descendants(run.process.pid)
    assert run.ctrl_c() == 0
    assert [pid for pid in processes if alive(pid)] == []

    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "OPENROUTER_API_KEY"):
        assert f"warning: {name} is not set" in run.output
    assert "TWILIO_WHATSAPP_NUMBER is not set" not in run.output


def test_make_run_without_public_base_url_checks_signatures_against_its_loopback_url(local_run):
    run = local_run(PUBLIC_BASE_URL="")

    wait_for(run.healthy, what="/health")
    form = inbound_form("Hello over loopback", sender=ADA)
    signed_for_loopback = requests.post(run.url("/whatsapp/webhook"), data=form, timeout=10,
                                        headers={"X-Twilio-Signature": sign(run.url("/whatsapp/webhook"), form)})
    other = inbound_form("Hello from elsewhere", sender=ADA)
    signed_for_another_host = requests.post(run.url("/whatsapp/webhook"), data=other, timeout=10,
                                            headers={"X-Twilio-Signature": sign(WEBHOOK_URL, other)})
    assert run.ctrl_c() == 0

    assert (signed_for_loopback.status_code, signed_for_another_host.status_code) == (200, 403)
    assert f"PUBLIC_BASE_URL is not set: using http://127.0.0.1:{run.port}" in run.output


def load_run_local():
    """scripts/run_local.py as a module (it reads RUN_LOCAL_ENV_FILE when loaded)."""
    spec = importlib.util.spec_from_file_location("run_local", PROJECT_DIR / "scripts" / "run_local.py")
    run_local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_local)
    return run_local


@pytest.mark.parametrize("existing", [None, "PUBLIC_BASE_URL=https://bot.example.com\n"], ids=["fresh", "existing"])
def test_make_run_writes_its_secrets_to_a_dotenv_only_its_owner_can_read(tmp_path, monkeypatch, existing):
    env_file = tmp_path / ".env"
    if existing is not None:
        env_file.write_text(existing)
        env_file.chmod(0o644)
    monkeypatch.setenv("RUN_LOCAL_ENV_FILE", str(env_file))
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("FIELD_ENCRYPTION_KEY", raising=False)

    load_run_local().ensure_dev_secrets()

    assert env_file.stat().st_mode & 0o777 == 0o600
    written = env_file.read_text()
    assert written.startswith(existing or "\n") and "SECRET_KEY=" in written and "FIELD_ENCRYPTION_KEY=" in written


def test_local_redis_starts_in_the_given_directory_and_stops(tmp_path):
    local_redis = load_run_local().LocalRedis(tmp_path / "instance")

    url = local_redis.start()
    try:
        assert Redis.from_url(url).ping()
        pid = local_redis.process.pid
        assert os.getpgid(pid) == pid  # its own group: the terminal's Ctrl-C does not reach it first
    finally:
        local_redis.stop()
    assert not alive(pid)
    assert (tmp_path / "instance").is_dir()
