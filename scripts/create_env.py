"""Write .env from .env.example with a fresh SECRET_KEY and FIELD_ENCRYPTION_KEY: `python3 scripts/create_env.py`.

Standard library only, so it runs before any dependency is installed (e.g. ahead of
`docker compose up`). It never overwrites an existing .env.
"""
from __future__ import annotations

import base64
import re
import secrets
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
EXAMPLE = PROJECT_DIR / ".env.example"
TARGET = PROJECT_DIR / ".env"


def fresh_secrets() -> dict[str, str]:
    """Return a random session secret and a Fernet key (32 random bytes, url-safe base64)."""
    return {
        "SECRET_KEY": secrets.token_hex(32),
        "FIELD_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }


def fill(template: str, values: dict[str, str]) -> str:
    """Set each `NAME=` line of `template` named in `values`; leave every other line as it is."""
    for name, value in values.items():
        template, count = re.subn(rf"^{name}=.*$", f"{name}={value}", template, count=1, flags=re.M)
        if not count:
            template += f"{name}={value}\n"
    return template


def main() -> int:
    if TARGET.exists():
        print(f"{TARGET.name} exists already; left unchanged (delete it to start over)", file=sys.stderr)
        return 1
    TARGET.write_text(fill(EXAMPLE.read_text(), fresh_secrets()))
    TARGET.chmod(0o600)
    print(f"wrote {TARGET.name} with a new SECRET_KEY and FIELD_ENCRYPTION_KEY; "
          "add your Twilio and OpenRouter settings to it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
