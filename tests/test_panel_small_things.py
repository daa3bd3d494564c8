"""The small things a new operator trips on: hints that work in a fresh shell, the panel's Test that
checks the model too, clear start-up errors instead of tracebacks, a favicon, a readable prompt box."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from chatbot.models import AdminUser, AIConfiguration
from tests.conftest import PASSWORD, PROJECT_DIR, csrf_token
from tests.support import free_port

# A command hint with a bare `flask` (or `flask --app wsgi`): it works only in a shell whose PATH
# has the virtualenv, which a fresh shell has not.
BARE_FLASK_HINT = re.compile(r"(?<![/\w-])flask (?:--app|[a-z][a-z-]+ )")
BAD_SETTING = {"TWILIO_ACCOUNT_SID": "AC123"}
BAD_SETTING_PROBLEM = "TWILIO_ACCOUNT_SID must be AC followed by 32 hex characters"


def fresh_shell(env: dict, *command: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command in the project as typed into a new terminal: no FLASK_APP, no virtualenv on PATH."""
    environ = {name: value for name, value in os.environ.items() if name not in ("FLASK_APP", "VIRTUAL_ENV")}
    environ["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return subprocess.run(list(command), cwd=PROJECT_DIR, env={**environ, **env}, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


# --- (a) hints that work in a fresh shell ------------------------------------------------------------

def test_the_panel_and_make_run_hint_at_commands_by_their_virtualenv_path():
    sources = [*(PROJECT_DIR / "chatbot" / "templates").rglob("*.html"), PROJECT_DIR / "scripts" / "run_local.py"]
    bare = [f"{path.relative_to(PROJECT_DIR)}: {hint}" for path in sources
            for hint in BARE_FLASK_HINT.findall(path.read_text())]
    assert bare == []


def test_the_login_pages_hint_creates_an_admin_in_a_fresh_shell(client, env, config):
    hint = re.search(r"<code>(\.venv/bin/flask [^<]+)</code>", client.get("/admin/login/").get_data(as_text=True))
    command = hint.group(1).replace("NAME", "ops").split()
    assert command[:2] == [".venv/bin/flask", "create-admin"]

    created = fresh_shell({**env, "DATABASE_URL": config.database_url}, *command, "--password-stdin",
                          stdin=f"{PASSWORD}\n")

    assert created.returncode == 0, created.stderr
    assert AdminUser.get(AdminUser.username == "ops").check_password(PASSWORD)


def test_the_invalid_settings_page_names_a_command_that_works_in_a_fresh_shell(env):
    from chatbot import create_config_error_app
    from tests.test_cli_check_config import invalid_settings_error

    answer = create_config_error_app(invalid_settings_error(env)).test_client().get("/admin/")
    assert answer.status_code == 503
    assert "`.venv/bin/flask check-config`" in answer.get_data(as_text=True)


# --- (b) the panel's Test checks the model as `flask ai-config test` does ----------------------------

def test_the_panels_test_checks_the_model_slug_too(operator, services, fake_openrouter):
    typo = AIConfiguration.create(name="typo", model_name="openai/gpt-4o-mni")
    typo.set_api_key("sk-or-v1-paneltest0001", services.cipher)
    typo.save()
    token = csrf_token(operator, "/admin/aiconfiguration/")

    def test(configuration) -> str:
        return operator.post(f"/admin/aiconfiguration/test/{configuration.id}/", data={"csrf_token": token},
                             follow_redirects=True).get_data(as_text=True)

    failed = test(typo)
    assert "Connection failed for typo" in failed
    assert "OpenRouter key: sk-or-…0001" in failed
    assert "OpenRouter model: openai/gpt-4o-mni is not offered by OpenRouter" in failed
    assert any(request.path.endswith("/models") for request in fake_openrouter.requests)

    AIConfiguration.update(model_name="openai/gpt-4o-mini").where(AIConfiguration.id == typo.id).execute()
    passed = test(typo)
    assert "Connection OK for typo" in passed and "OpenRouter model: openai/gpt-4o-mini is available" in passed


# --- (c) create-admin on an unmigrated database --------------------------------------------------------

@pytest.mark.postgres
def test_create_admin_on_an_unmigrated_database_says_to_run_init_db(env, redis, empty_database_url):
    result = fresh_shell({**env, "DATABASE_URL": empty_database_url},
                         ".venv/bin/flask", "create-admin", "--username", "ops", "--password-stdin",
                         stdin=f"{PASSWORD}\n")

    assert result.returncode == 1
    assert "The database has no schema yet: run `.venv/bin/flask init-db` first." in result.stderr
    assert "Traceback" not in result.stderr


# --- (d) invalid settings stop each process with a short list ------------------------------------------

@pytest.mark.parametrize("program", [["worker.py"], ["scheduler.py"]])
def test_worker_and_scheduler_list_invalid_settings_instead_of_a_traceback(env, program):
    result = fresh_shell({**env, **BAD_SETTING}, sys.executable, *program)

    assert result.returncode != 0
    assert "invalid configuration:" in result.stderr and BAD_SETTING_PROBLEM in result.stderr
    assert "Traceback" not in result.stderr


def test_gunicorn_lists_invalid_settings_and_starts_no_worker(env, tmp_path):
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{free_port()}",
               "wsgi:app"]
    server = subprocess.Popen(command, cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **env, **BAD_SETTING, "WEB_CONCURRENCY": "1",
                                   "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"})
    try:
        _, stderr = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGKILL)
            server.wait()

    assert server.returncode != 0
    assert "invalid configuration:" in stderr and BAD_SETTING_PROBLEM in stderr
    assert "Traceback" not in stderr and "Booting worker" not in stderr


# --- (e) a favicon ---------------------------------------------------------------------------------------

def test_the_favicon_is_served_and_linked_from_the_panel(operator, client):
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    assert icon.get_data(as_text=True).startswith("<svg")
    linked = re.search(r'<link rel="icon" href="([^"]+)"', operator.get("/admin/").get_data(as_text=True))
    assert client.get(linked.group(1)).status_code == 200


# --- (f) a system prompt box tall enough to read -------------------------------------------------------

def test_the_system_prompt_box_shows_a_dozen_lines(operator):
    form = operator.get("/admin/aiconfiguration/new/").get_data(as_text=True)
    box = re.search(r"<textarea[^>]*id=\"system_prompt\"[^>]*>", form).group(0)
    assert 'rows="12"' in box
