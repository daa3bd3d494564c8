"""`flask create-admin` takes the password from a hidden prompt or standard input, never from argv."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chatbot.models import AdminUser
from tests.conftest import PASSWORD, PROJECT_DIR, wait_for


def test_password_on_the_command_line_is_refused(cli, services):
    result = cli("create-admin", "--username", "ops", "--password", PASSWORD)
    assert result.exit_code == 2
    assert "No such option '--password'" in result.output
    assert AdminUser.select().count() == 0


def test_password_stdin_reads_the_first_line(cli, services):
    result = cli("create-admin", "--username", "ops", "--password-stdin", input=f"{PASSWORD}\nignored\n")
    assert result.exit_code == 0, result.output
    assert AdminUser.get().check_password(PASSWORD)


def test_the_prompt_asks_twice_and_refuses_a_mismatch(cli, services):
    result = cli("create-admin", "--username", "ops", input=f"{PASSWORD}\nsomething else\n")
    assert result.exit_code != 0
    assert AdminUser.select().count() == 0
    assert PASSWORD not in result.output  # hidden input is not echoed


def test_a_waiting_create_admin_shows_no_password_in_its_process_arguments(env, config, services):
    command = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "create-admin", "--username", "ops", "--password-stdin"],
        cwd=PROJECT_DIR, env={**os.environ, **env, "DATABASE_URL": config.database_url},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Nothing is written to its standard input yet: it waits there, as `ps` would catch it.
        cmdline = Path(f"/proc/{command.pid}/cmdline")
        assert wait_for(lambda: b"create-admin" in cmdline.read_bytes())
        arguments = cmdline.read_bytes().split(b"\0")
        assert b"--password-stdin" in arguments
        assert not any(PASSWORD.encode() in argument for argument in arguments)
        stdout, stderr = command.communicate(f"{PASSWORD}\n", timeout=60)
    finally:
        command.kill()
    assert command.returncode == 0, stderr
    assert "Created admin user 'ops'" in stdout
    assert AdminUser.get().check_password(PASSWORD)
