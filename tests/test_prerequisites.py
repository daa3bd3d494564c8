"""`make test` on a fresh machine: scripts/test_prerequisites.py names what is missing, and a private Postgres."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import PROJECT_DIR
from tests.support import PrivatePostgres, free_port, postgres_binary, throwaway_postgres_database


def path_without(tmp_path: Path, *hidden: str) -> str:
    """A PATH holding everything the real one does except `hidden`, as a folder of symlinks."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = folder / entry.name
            if entry.name not in hidden and not target.exists() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    return str(folder)


def check_prerequisites(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/test_prerequisites.py"], cwd=PROJECT_DIR,
                          env={**os.environ, "TEST_PREREQUISITES_INSTALL": "0", **env},
                          capture_output=True, text=True, timeout=60)


def test_everything_present_passes_silently():
    check = check_prerequisites()
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")


def test_missing_programs_are_named_with_how_to_install_them(tmp_path):
    check = check_prerequisites(PATH=path_without(tmp_path, "chromium", "redis-server"))
    assert check.returncode == 1
    assert "  - chromium: the admin panel's browser tests drive Debian's Chromium" in check.stderr
    assert "  - redis-server: the tests start a redis-server of their own" in check.stderr
    assert "sudo apt-get install chromium redis-server\n" in check.stderr
    assert "  - postgres:" not in check.stderr
    assert "(TEST_PREREQUISITES_INSTALL=0: not installing them.)" in check.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="installing needs root")
def test_as_root_it_installs_debians_packages_then_checks_again(tmp_path):
    path = path_without(tmp_path, "chromium", "apt-get")
    calls = tmp_path / "apt-get.calls"
    fake_apt = Path(path) / "apt-get"  # records its arguments and installs nothing
    fake_apt.write_text(f'#!/bin/sh\necho "$DEBIAN_FRONTEND $*" >> {calls}\n')
    fake_apt.chmod(0o755)
    check = check_prerequisites(PATH=path, TEST_PREREQUISITES_INSTALL="1")
    assert calls.read_text().splitlines() == ["noninteractive update -qq", "noninteractive install -y -qq chromium"]
    assert "installing Debian's chromium with apt-get" in check.stdout
    assert check.returncode == 1 and "  - chromium:" in check.stderr


def test_the_suite_stops_before_its_first_test_when_a_program_is_missing(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_split.py"], cwd=PROJECT_DIR,
                         env={**os.environ, "PATH": path_without(tmp_path, "chromium"),
                              "TEST_PREREQUISITES_INSTALL": "0"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "  - chromium: the admin panel's browser tests drive Debian's Chromium" in run.stderr
    assert "passed" not in run.stdout


def test_a_named_postgres_that_is_down_is_reported_not_replaced():
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    check = check_prerequisites(TEST_POSTGRES_URL=down)
    assert check.returncode == 1
    assert "  - postgres: the tests use the Postgres at TEST_POSTGRES_URL" in check.stderr
    assert "sudo apt-get install postgresql\n" in check.stderr


@pytest.mark.skipif(postgres_binary("initdb") is None, reason="no initdb on this machine")
def test_private_postgres_serves_throwaway_databases_and_leaves_nothing_behind():
    cluster = PrivatePostgres().start()
    try:
        with throwaway_postgres_database(cluster.admin_url, "chatbot_private") as url:
            with psycopg2.connect(url) as connection, connection.cursor() as cursor:
                cursor.execute("CREATE TABLE probe (id int); INSERT INTO probe VALUES (1); SELECT id FROM probe")
                assert cursor.fetchone() == (1,)
            connection.close()
        directory = cluster.directory
    finally:
        cluster.stop()
    assert not directory.exists()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(cluster.admin_url, connect_timeout=2)
