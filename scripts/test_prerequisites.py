"""Make sure the programs the test suite needs are here: install Debian's packages for the missing ones when we can.

The tests run this before the first test (tests/conftest.py), so `make test` works on a fresh machine.
Run as root with apt-get, it installs what is missing; otherwise it names what is missing and how to
install it, and exits 1. TEST_PREREQUISITES_INSTALL=0 turns installing off.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import postgres_answers, postgres_binary, postgres_owner, running_postgres_url  # noqa: E402


@dataclass
class Requirement:
    name: str
    package: str  # Debian's
    why: str
    present: Callable[[], bool]


def private_postgres_possible() -> bool:
    if not (postgres_binary("initdb") and postgres_binary("pg_ctl")):
        return False
    try:
        postgres_owner()
    except RuntimeError:
        return False
    return True


def postgres_present() -> bool:
    url = running_postgres_url()
    return postgres_answers(url) if url else private_postgres_possible()


REQUIREMENTS = [
    Requirement("chromium", "chromium", "the admin panel's browser tests drive Debian's Chromium",
                lambda: shutil.which("chromium") is not None),
    Requirement("redis-server", "redis-server", "the tests start a redis-server of their own",
                lambda: shutil.which("redis-server") is not None),
    Requirement("postgres", "postgresql",
                "the tests use the Postgres at TEST_POSTGRES_URL or 127.0.0.1:5432, else start one of their "
                "own with initdb and pg_ctl (as the 'postgres' user when run as root)",
                postgres_present),
]


def why_not_install() -> str | None:
    """Say why this step cannot install packages itself, or None when it can."""
    if os.environ.get("TEST_PREREQUISITES_INSTALL", "1") == "0":
        return "TEST_PREREQUISITES_INSTALL=0: not installing them"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "run as root where apt-get is available, this step installs them itself"
    return None


def install(packages: list[str]) -> None:
    print(f"[test prerequisites] installing Debian's {', '.join(packages)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, check=False)


def main() -> int:
    missing = [requirement for requirement in REQUIREMENTS if not requirement.present()]
    if missing and why_not_install() is None:
        install([requirement.package for requirement in missing])
        missing = [requirement for requirement in missing if not requirement.present()]
    if not missing:
        return 0
    print("The test suite needs programs that are missing:", file=sys.stderr)
    for requirement in missing:
        print(f"  - {requirement.name}: {requirement.why}", file=sys.stderr)
    print(f"Install them with:\n  sudo apt-get install {' '.join(r.package for r in missing)}", file=sys.stderr)
    if why_not_install():
        print(f"({why_not_install()}.)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
