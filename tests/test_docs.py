"""The README's quick start runs as written, and the docs stay true to the code."""
from __future__ import annotations

import json
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

DOCS = ["setup.md", "deploy.md", "api.md", "admin.md", "troubleshooting.md", "handoff.md", "knowledge.md", "tools.md",
        "campaigns.md"]
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


# --- the docs against the code (each held by a test where one can hold it) -----------------------

NUMBER_WORDS = {"four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}


def served_endpoints(app) -> set[str]:
    """`METHOD /path` of every endpoint outside the admin, its static files and the favicon."""
    return {f"{method} {rule.rule}" for rule in app.url_map.iter_rules()
            if not rule.rule.startswith(("/admin", "/static")) and rule.rule != "/favicon.ico"
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_api_doc_counts_and_documents_every_endpoint_the_app_serves(app):
    api = (PROJECT_DIR / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^## `((?:GET|POST|PUT|DELETE) /[^`]*)`", api, re.M))
    counted = re.search(r"The web process serves (\w+) endpoints", api).group(1)

    assert documented == served_endpoints(app)
    assert NUMBER_WORDS[counted] == len(served_endpoints(app))


def webhook_verdicts() -> set[str]:
    """Every verdict a webhook log row can carry, read from the code that writes them."""
    web = PROJECT_DIR / "chatbot" / "web"
    sources = {name: (web / f"{name}.py").read_text() for name in ("webhook", "status", "audit", "security")}
    verdicts = set()
    for source in sources.values():
        verdicts |= set(re.findall(r'verdict="(\w+)"', source)) | set(re.findall(r'"verdict": "(\w+)"', source))
    not_for_us = sources["webhook"].split("def _not_for_us", 1)[1].split("\ndef ", 1)[0]
    verdicts |= set(re.findall(r'return "(\w+)"', not_for_us))
    verdicts |= set(re.findall(r'refused\(\d{3}, "(\w+)"', sources["security"]))
    # A row budget's summary verdict is the last of its arguments.
    verdicts |= {re.findall(r'"(\w+)"', budget)[-1]
                 for budget in re.findall(r"= RowBudget\((.*?)\)\n", sources["audit"], re.S)}
    from chatbot.rate_limiter import Allowance
    return verdicts | {allowance.value for allowance in Allowance}


def test_the_api_doc_and_the_metrics_table_name_every_webhook_verdict():
    verdicts = webhook_verdicts()
    api = (PROJECT_DIR / "docs" / "api.md").read_text()
    metrics_row = next(line for line in (PROJECT_DIR / "docs" / "deploy.md").read_text().splitlines()
                       if line.startswith("| `chatbot_webhook_requests_total`"))

    assert len(verdicts) >= 15 and {"not_our_number", "number_inactive", "from_ourselves"} <= verdicts
    assert [verdict for verdict in sorted(verdicts) if f"`{verdict}`" not in api] == []
    # Receipts and the flood's summary rows are not webhook requests the metric counts.
    counted = verdicts - {"status_callback", "refused_uncounted", "unchanged_uncounted"}
    assert [verdict for verdict in sorted(counted) if f"`{verdict}`" not in metrics_row] == []


def readme_settings() -> dict[str, str]:
    """The README's settings table: each variable's documented default."""
    return dict(re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|", readme(), re.M))


def test_the_settings_documented_are_the_settings_config_reads():
    source = (PROJECT_DIR / "config.py").read_text()
    read = set(re.findall(r'reader\.\w+\(\s*"([A-Z0-9_]+)"', source))
    example = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (PROJECT_DIR / ".env.example").read_text(), re.M))

    assert len(read) >= 70
    assert set(readme_settings()) == read
    assert example == read


def test_each_default_the_readme_shows_is_configs_default():
    config = Config.from_mapping({"SECRET_KEY": "x", "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode()})
    fields = dict((env, field) for field, env in re.findall(
        r'"(\w+)":\s*reader\.\w+\(\s*"([A-Z0-9_]+)"', (PROJECT_DIR / "config.py").read_text()))
    shown = {name: default.strip()[1:-1] for name, default in readme_settings().items()
             if re.fullmatch(r"`[^`]+`", default.strip()) and name != "USER_COMMANDS"}

    assert len(shown) >= 50
    for name, default in shown.items():
        value = getattr(config, fields[name])
        actual = str(value).lower() if isinstance(value, bool) else str(value)
        assert actual == default or (isinstance(value, float) and float(default) == value), name


def test_setup_says_to_set_the_status_callback_url_the_receipts_arrive_at():
    from chatbot.whatsapp import STATUS_CALLBACK_PATH

    setup = (PROJECT_DIR / "docs" / "setup.md").read_text()
    section = setup.split("## 5. ", 1)[1].split("\n## ", 1)[0]
    assert f"**Status callback URL**: `https://<your origin>{STATUS_CALLBACK_PATH}`" in section
    assert "empty" not in section.split("Status callback URL", 1)[1].split(".", 1)[0]


def test_the_readme_shows_what_health_answers(client):
    answer = client.get("/health").get_json()
    shown = re.search(r"`GET /health`\s+answers 200 with `(\{[^`]*\})`", readme()).group(1)

    assert json.loads(shown) == {name: value for name, value in answer.items() if name != "sqlite_writer_turn"}
    assert '"sqlite_writer_turn": true' in readme()


def test_the_readme_counts_the_test_processes_make_test_starts():
    makefile = (PROJECT_DIR / "Makefile").read_text()
    processes = int(re.search(r"pytest -q -n (\d+)", makefile).group(1))
    said = re.search(r"The suite runs in (\w+) processes", readme()).group(1)
    assert {"two": 2, "three": 3, "four": 4}[said] == processes


def test_the_docs_say_how_long_unsent_replies_are_retried():
    from chatbot.jobs.tasks import RESEND_HORIZON

    days = f"{RESEND_HORIZON.days} days"
    assert days in (PROJECT_DIR / "docs" / "troubleshooting.md").read_text().split("## Twilio errors", 1)[1]
    assert f"retried by the sweeper for {days}" in (PROJECT_DIR / "docs" / "setup.md").read_text()


def test_the_readme_says_which_port_make_run_takes_and_how_to_change_it():
    run_local = (PROJECT_DIR / "scripts" / "run_local.py").read_text()
    default = re.search(r'env\.get\("PORT"\) or "(\d+)"', run_local).group(1)
    assert f"It listens on\nport {default}; `PORT=8080 make run`" in readme()
