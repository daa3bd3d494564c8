"""The README's quick start runs as written, and the docs stay true to the code."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from cryptography.fernet import Fernet
from dotenv import dotenv_values

from config import Config
from tests.conftest import PROJECT_DIR, free_port

DOCS = ["setup.md", "deploy.md", "api.md", "admin.md", "troubleshooting.md"]
VENV = Path(sys.prefix)


def readme() -> str:
    return (PROJECT_DIR / "README.md").read_text()


def quick_start_commands() -> list[str]:
    """Every shell command in the README's Quick start section, comments removed."""
    section = readme().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            command = line.split(" #", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


def make(*arguments: str) -> list[str]:
    # -o: treat the virtualenv as installed, so a test never runs pip (make run/test do on first use).
    return ["make", "--no-print-directory", f"VENV={VENV}", "-o", f"{VENV}/.installed", *arguments]


# How each quick start command is checked here. `docker compose up --build` cannot run on a machine
# without a Docker engine; what it runs is tested instead: the compose file (test_deploy.py) and
# each container's entrypoint, command and health check on this host (test_entrypoint.py).
COVERED = {
    "make run": "test_make_run_starts_every_process_and_stops_on_ctrl_c",
    "make test": "test_make_test_runs_pytest_which_collects_the_suite",
    "python3 scripts/create_env.py": "test_create_env_writes_valid_fresh_secrets_once",
    "docker compose up --build": "tests/test_deploy.py and tests/test_entrypoint.py",
}


def test_quick_start_starts_with_make_run_and_make_test_and_every_command_is_tested():
    commands = quick_start_commands()
    assert commands[:2] == ["make run", "make test"]
    assert [command for command in commands if command not in COVERED] == []


def marked_processes(marker: str) -> list[int]:
    """Return the ids of live processes whose environment carries `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_make_run_starts_every_process_and_stops_on_ctrl_c(tmp_path, redis_url):
    marker = f"CHATBOT_TEST_RUN={uuid.uuid4().hex}"
    port = free_port()
    env = {
        **os.environ,
        "SECRET_KEY": "make-run-test",
        "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'chatbot.sqlite3'}",
        "REDIS_URL": redis_url,
        "PORT": str(port),
        marker.split("=")[0]: marker.split("=")[1],
    }
    run = subprocess.Popen(make("run"), cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        healthy = False
        while not healthy and time.monotonic() < deadline and run.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    healthy = answer.status == 200
            except OSError:  # refused, reset or timed out while the processes start
                time.sleep(0.2)
        assert healthy, "make run never answered /health"
        assert len(marked_processes(marker)) >= 5  # make, the runner, web (master + worker), worker, scheduler
    finally:
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
        output, _ = run.communicate(timeout=30)
    assert "webhook URL: http://127.0.0.1" in output and "[run] stopped" in output
    deadline = time.monotonic() + 10
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marked_processes(marker) == [], output


def test_make_test_runs_pytest_which_collects_the_suite():
    # Running the suite from inside itself would recurse: check the recipe, then that pytest
    # collects every test without error.
    recipe = subprocess.run(make("-n", "test"), cwd=PROJECT_DIR, capture_output=True, text=True, timeout=30)
    assert recipe.returncode == 0, recipe.stderr
    command = shlex.split(recipe.stdout.strip())
    assert command == [f"{VENV}/bin/python", "-m", "pytest", "-q", "-n", "3", "--dist", "loadfile"]
    collected = subprocess.run([*command, "--collect-only"], cwd=PROJECT_DIR, capture_output=True, text=True,
                               timeout=120)
    assert collected.returncode == 0, collected.stdout[-2000:]
    assert re.search(r"^\d+ tests collected", collected.stdout, re.M), collected.stdout[-500:]


def test_create_env_writes_valid_fresh_secrets_once(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(PROJECT_DIR / "scripts" / "create_env.py", tmp_path / "scripts")
    shutil.copy(PROJECT_DIR / ".env.example", tmp_path)
    command = shlex.split("python3 scripts/create_env.py")
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert first.returncode == 0, first.stderr
    written = (tmp_path / ".env").read_text()
    values = dotenv_values(tmp_path / ".env")
    config = Config.from_mapping(values)
    assert len(config.secret_key) == 64 and config.field_encryption_key
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0
    example = dotenv_values(tmp_path / ".env.example")
    assert {k: v for k, v in values.items() if k not in ("SECRET_KEY", "FIELD_ENCRYPTION_KEY")} == \
        {k: v for k, v in example.items() if k not in ("SECRET_KEY", "FIELD_ENCRYPTION_KEY")}
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "left unchanged" in again.stderr
    assert (tmp_path / ".env").read_text() == written


# --- the docs ------------------------------------------------------------------------------------

def test_readme_points_to_every_doc_and_every_doc_link_resolves():
    assert [name for name in DOCS if f"(docs/{name})" not in readme()] == []
    for path in [PROJECT_DIR / "README.md", *(PROJECT_DIR / "docs" / name for name in DOCS)]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_api_doc_lists_every_field_the_webhook_reads():
    source = (PROJECT_DIR / "chatbot" / "web" / "inbound.py").read_text()
    parser = source.split("def parse_inbound", 1)[1].split("\ndef ", 1)[0]
    optional_fields = parser.split("for name in (", 1)[1].split(")", 1)[0]
    fields = set(re.findall(r'form\.get\("(\w+)"', parser)) | set(re.findall(r'"(\w+)"', optional_fields))
    fields |= {"MediaUrl0", "MediaContentType0"} if "MediaUrl{index}" in parser else set()
    api = (PROJECT_DIR / "docs" / "api.md").read_text()
    assert len(fields) >= 12
    assert [field for field in sorted(fields) if f"`{field}`" not in api] == []


def test_api_doc_lists_every_status_the_webhook_answers():
    source = (PROJECT_DIR / "chatbot" / "web" / "webhook.py").read_text()
    statuses = set(re.findall(r"status=(\d{3})", source)) | set(re.findall(r"refuse\((\d{3})", source))
    api = (PROJECT_DIR / "docs" / "api.md").read_text()
    assert statuses == {"200", "400", "403", "503"}
    assert [status for status in statuses if f"| `{status}` |" not in api] == []


def test_troubleshooting_covers_the_errors_operators_meet():
    text = (PROJECT_DIR / "docs" / "troubleshooting.md").read_text()
    for needle in ("PUBLIC_BASE_URL", "63016", "21211", "| 401 |", "| 402 |", "| 429 |",
                   "Listening on chatbot", "REDIS_URL", "DATABASE_URL"):
        assert needle in text, needle


def test_deploy_doc_lists_every_process_level_variable():
    gunicorn = (PROJECT_DIR / "gunicorn.conf.py").read_text()
    entrypoint = (PROJECT_DIR / "docker-entrypoint.sh").read_text()
    variables = (set(re.findall(r'os\.environ\.get\(\s*["\x27](\w+)["\x27]', gunicorn))
                 | set(re.findall(r"\$\{(\w+):-", entrypoint)))
    deploy = (PROJECT_DIR / "docs" / "deploy.md").read_text()
    assert variables == {"PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS", "FORWARDED_ALLOW_IPS",
                         "WAIT_TIMEOUT", "SKIP_MIGRATIONS"}
    assert [name for name in variables if f"| `{name}` |" not in deploy] == []
