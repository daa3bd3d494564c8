"""Two-factor login (TOTP, RFC 6238): enrolment, code checks, recovery codes and the reset.

The secret is stored encrypted with FIELD_ENCRYPTION_KEY; it counts as on once `totp_enabled_at`
is set, which only a valid code confirms. A code is good within one 30-second step either side of
now, and once: the step of the last code accepted is kept, and a code of that step or an earlier
one is refused. The compare-and-set on that step (and on the list of recovery-code hashes) is one
UPDATE, so two requests racing with the same code cannot both pass. Recovery codes are stored as
salted SHA-256 hashes (they are random, so a slow hash buys nothing) and each works once.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

import pyotp
import segno
from peewee import Value

from chatbot.crypto import FieldCipher
from chatbot.models import AdminUser, utcnow

RECOVERY_CODE_COUNT = 10
# Codes are accepted from this many steps either side of the server's clock.
CLOCK_DRIFT_STEPS = 1
# Recovery codes in lowercase letters and digits without look-alikes: "k7m2p-9qx4t".
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
TOTP_CODE = re.compile(r"\d{6}")


def new_secret() -> str:
    """A fresh random base32 secret (160 bits)."""
    return pyotp.random_base32(32)


def grouped(secret: str) -> str:
    """The secret in groups of four characters, for reading it off the screen."""
    return " ".join(secret[index:index + 4] for index in range(0, len(secret), 4))


def provisioning_uri(secret: str, username: str, issuer: str) -> str:
    """The otpauth:// link an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    """The QR code of `uri` as inline SVG markup (no script, no data: URL)."""
    return segno.make(uri, error="m").svg_inline(scale=5, dark="#000", light="#fff")


def secret_of(user: AdminUser, cipher: FieldCipher) -> str | None:
    """The user's TOTP secret in plain text, or None when none is stored."""
    return cipher.decrypt(user.totp_secret_encrypted) if user.totp_secret_encrypted else None


def begin_enrolment(user: AdminUser, cipher: FieldCipher) -> str:
    """Return the secret being enrolled, storing a new one (not yet on) when none is waiting."""
    if user.has_two_factor:
        raise ValueError("two-factor login is on already: turn it off first")
    secret = secret_of(user, cipher)
    if secret is None:
        secret = new_secret()
        user.totp_secret_encrypted = cipher.encrypt(secret)
        AdminUser.update(totp_secret_encrypted=user.totp_secret_encrypted).where(AdminUser.id == user.id).execute()
    return secret


def _normalised(code: str) -> str:
    return re.sub(r"[\s-]", "", code or "").lower()


def _step_of(secret: str, code: str, now: float) -> int | None:
    """The time step whose code `code` is, within CLOCK_DRIFT_STEPS of `now`; None when none."""
    totp = pyotp.TOTP(secret)
    for offset in range(-CLOCK_DRIFT_STEPS, CLOCK_DRIFT_STEPS + 1):
        moment = now + offset * totp.interval
        if hmac.compare_digest(totp.at(moment), code):
            return int(moment) // totp.interval
    return None


def _use_step(user: AdminUser, step: int) -> bool:
    """Record `step` as used unless it (or a later one) was used already; True when this call did."""
    taken = (AdminUser
             .update(totp_last_step=step)
             .where((AdminUser.id == user.id) & (AdminUser.totp_last_step < step))
             .execute())
    if taken:
        user.totp_last_step = step
    return bool(taken)


def check_totp(user: AdminUser, cipher: FieldCipher, code: str, now: float | None = None) -> bool:
    """Whether `code` is a current TOTP code of the user's secret not used before; uses it up."""
    code = _normalised(code)
    secret = secret_of(user, cipher)
    if secret is None or not TOTP_CODE.fullmatch(code):
        return False
    step = _step_of(secret, code, time.time() if now is None else now)
    return step is not None and _use_step(user, step)


def _hash_recovery_code(code: str, salt: str) -> str:
    return f"{salt}${hashlib.sha256(f'{salt}:{code}'.encode()).hexdigest()}"


def _matches(code: str, stored: str) -> bool:
    salt, _, _digest = stored.partition("$")
    return hmac.compare_digest(_hash_recovery_code(code, salt), stored)


def use_recovery_code(user: AdminUser, code: str) -> bool:
    """Whether `code` is one of the user's unused recovery codes; crosses it off."""
    code = _normalised(code)
    if not code or TOTP_CODE.fullmatch(code):
        return False
    current = AdminUser.get_by_id(user.id).recovery_codes or []
    match = next((stored for stored in current if _matches(code, stored)), None)
    if match is None:
        return False
    left = [stored for stored in current if stored != match]
    # Only if the list is still the one read: a racing request with the same code then fails.
    crossed = (AdminUser
               .update(recovery_codes=left)
               .where((AdminUser.id == user.id) & (AdminUser.recovery_codes == Value(current, unpack=False)))
               .execute())
    if crossed:
        user.recovery_codes = left
    return bool(crossed)


def check_code(user: AdminUser, cipher: FieldCipher, code: str, now: float | None = None) -> str | None:
    """Check a second-factor answer: "totp" or "recovery code" for which kind was good, else None."""
    if not user.has_two_factor:
        return None
    if check_totp(user, cipher, code, now):
        return "totp"
    if use_recovery_code(user, code):
        return "recovery code"
    return None


def new_recovery_codes(user: AdminUser) -> list[str]:
    """Replace the user's recovery codes with RECOVERY_CODE_COUNT new ones; return them (shown once)."""
    codes = ["".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(10)) for _ in range(RECOVERY_CODE_COUNT)]
    codes = [f"{code[:5]}-{code[5:]}" for code in codes]
    user.recovery_codes = [_hash_recovery_code(_normalised(code), secrets.token_hex(8)) for code in codes]
    AdminUser.update(recovery_codes=user.recovery_codes).where(AdminUser.id == user.id).execute()
    return codes


def confirm_enrolment(user: AdminUser, cipher: FieldCipher, code: str, now: float | None = None) -> list[str] | None:
    """Turn two-factor login on if `code` is valid for the waiting secret; return the recovery codes."""
    if user.has_two_factor or not check_totp(user, cipher, code, now):
        return None
    user.totp_enabled_at = utcnow()
    AdminUser.update(totp_enabled_at=user.totp_enabled_at).where(AdminUser.id == user.id).execute()
    return new_recovery_codes(user)


def reset_two_factor(user: AdminUser) -> None:
    """Turn two-factor login off: forget the secret, its last step and the recovery codes."""
    user.totp_secret_encrypted = None
    user.totp_enabled_at = None
    user.totp_last_step = 0
    user.recovery_codes = []
    (AdminUser
     .update(totp_secret_encrypted=None, totp_enabled_at=None, totp_last_step=0, recovery_codes=[])
     .where(AdminUser.id == user.id)
     .execute())
