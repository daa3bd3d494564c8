"""Two-factor login over HTTP: enrolment, the code step, recovery codes, REQUIRE_2FA, the username ceiling."""
from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pyotp
import pytest
from freezegun import freeze_time
from werkzeug.security import generate_password_hash

from chatbot import auth, two_factor
from chatbot.models import AdminUser, AIConfiguration, AuditEvent
from tests.conftest import PASSWORD, csrf_token, log_in
from tests.test_admin import ADMIN_PAGES
from tests.test_admin_sessions import ATTACKER, OPERATOR, attempt

STEP = 30
ENROL = "/admin/two-factor/"
VERIFY = "/admin/two-factor/verify/"
NEW_ADDRESS = "198.51.100.200"
ATTACK_ADDRESSES = [f"192.0.2.{number}" for number in range(1, 21)]


@pytest.fixture
def clock():
    """Time stopped in the middle of a TOTP step (the current one or the next, taken from time.time());
    tick(STEP) moves one on. Never before now: a session cookie signed later than the clock is refused."""
    now = time.time()
    middle = int(now) // STEP * STEP + STEP // 2
    middle += STEP if middle < now else 0
    with freeze_time(datetime.fromtimestamp(middle, tz=UTC), ignore=["redis"]) as frozen:
        yield frozen


def code_at(secret: str, offset_steps: int = 0) -> str:
    """The secret's code for the (frozen) clock's step, or `offset_steps` steps from it."""
    return pyotp.TOTP(secret).at(time.time() + offset_steps * STEP)


def text(response) -> str:
    return response.get_data(as_text=True)


def shown_secret(page: str) -> str:
    match = re.search(r'<code id="totp-secret">([A-Z2-7 ]+)</code>', page)
    assert match, "no secret on the enrolment page"
    return match.group(1).replace(" ", "")


def shown_recovery_codes(page: str) -> list[str]:
    return re.findall(r"<li><code>([a-z0-9-]+)</code></li>", page)


def post_code(client, path: str, code: str, address: str = OPERATOR, **fields):
    token = csrf_token(client, path)
    return client.post(path, environ_base={"REMOTE_ADDR": address},
                       data={"code": code, "csrf_token": token, **fields})


def enrol(client) -> tuple[str, list[str]]:
    """Turn two-factor login on with the secret the page shows; return it and the recovery codes."""
    secret = shown_secret(text(client.get(ENROL)))
    response = post_code(client, ENROL, code_at(secret))
    assert response.status_code == 200, text(response)
    return secret, shown_recovery_codes(text(response))


def log_in_with_code(client, code: str, address: str = OPERATOR):
    """The password, then `code` on the second page; return the answer to the code."""
    first = attempt(client, PASSWORD, address)
    assert first.status_code == 302 and first.headers["Location"].startswith(VERIFY), first.headers.get("Location")
    return post_code(client, VERIFY, code, address)


@pytest.fixture
def enrolled(app, admin_user, clock):
    """`ops` with two-factor login on, logged out again, a step later than the enrolment's code."""
    client = app.test_client()
    assert log_in(client).status_code == 302
    secret, codes = enrol(client)
    client.post("/admin/logout/", data={"csrf_token": csrf_token(client, "/admin/")})
    clock.tick(STEP)
    return secret, codes


def test_enrolment_shows_the_secret_and_a_code_computed_from_it_turns_two_factor_on(operator, services, clock):
    page = operator.get(ENROL)
    secret = shown_secret(text(page))
    stored = AdminUser.get(AdminUser.username == "ops")
    assert stored.totp_secret_encrypted and secret not in stored.totp_secret_encrypted
    assert services.cipher.decrypt(stored.totp_secret_encrypted) == secret
    assert stored.totp_enabled_at is None
    assert operator.get(ENROL).status_code == 200 and shown_secret(text(operator.get(ENROL))) == secret

    response = post_code(operator, ENROL, code_at(secret))

    assert response.status_code == 200
    assert len(shown_recovery_codes(text(response))) == 10
    assert AdminUser.get(AdminUser.username == "ops").has_two_factor
    assert "Two-factor login is on since" in text(operator.get(ENROL))


def test_the_qr_code_is_inline_svg_under_the_strict_policy(operator):
    page = operator.get(ENROL)
    assert re.search(r'<div class="mb-3" id="qr-code"><svg [^>]*class="segno"', text(page))
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"


def test_a_wrong_code_at_enrolment_leaves_two_factor_off(operator, clock):
    secret = shown_secret(text(operator.get(ENROL)))
    response = post_code(operator, ENROL, code_at(secret, 5))
    assert response.status_code == 400
    assert shown_secret(text(response)) == secret
    assert not AdminUser.get(AdminUser.username == "ops").has_two_factor


def test_login_asks_for_the_code_and_the_half_login_opens_nothing(app, enrolled):
    secret, _codes = enrolled
    client = app.test_client()
    first = attempt(client, PASSWORD, OPERATOR)
    assert first.status_code == 302 and first.headers["Location"].startswith(VERIFY)
    for path in ADMIN_PAGES:
        assert client.get(path).headers["Location"].startswith("/admin/login/"), path

    response = post_code(client, VERIFY, code_at(secret))

    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_the_half_login_lasts_five_minutes_at_most(app, enrolled, redis):
    attempt(app.test_client(), PASSWORD, OPERATOR)
    [key] = redis.scan_iter("chatbot:admin-pending:*")
    assert 0 < redis.ttl(key) <= auth.PENDING_SECONDS == 300


def test_a_wrong_code_is_refused_and_counted_in_the_login_throttle(app, enrolled):
    secret, _codes = enrolled
    client = app.test_client()
    # The password was attempt 1; four wrong codes make five, the free ones.
    wrong = [log_in_with_code(client, code_at(secret, 9)).status_code]
    wrong += [post_code(client, VERIFY, code_at(secret, 9)).status_code for _ in range(3)]
    assert wrong == [401] * 4

    refused = post_code(client, VERIFY, code_at(secret))

    assert refused.status_code == 429
    assert "Too many failed attempts" in text(refused)
    assert client.get("/admin/").status_code == 302
    assert app.test_client().get(VERIFY).headers["Location"].startswith("/admin/login/")
    assert [event.detail for event in AuditEvent.select().where(AuditEvent.action == "login_failed")
            .order_by(AuditEvent.id)] == ["code"] * 4 + ["throttled"]


def test_a_code_used_once_is_refused_again_and_so_is_an_older_one(app, enrolled):
    secret, _codes = enrolled
    assert log_in_with_code(app.test_client(), code_at(secret)).status_code == 302

    assert log_in_with_code(app.test_client(), code_at(secret)).status_code == 401
    assert log_in_with_code(app.test_client(), code_at(secret, -1)).status_code == 401
    # From another address: this one has used four of its five free attempts.
    assert log_in_with_code(app.test_client(), code_at(secret, 1), NEW_ADDRESS).status_code == 302


def test_recovery_codes_are_shown_once_and_each_works_once(app, enrolled):
    _secret, codes = enrolled
    assert len(set(codes)) == 10
    client = app.test_client()
    assert log_in(client).status_code == 302
    assert not any(code in text(client.get(ENROL)) for code in codes)

    assert log_in_with_code(app.test_client(), codes[3].upper()).status_code == 302
    assert log_in_with_code(app.test_client(), codes[3]).status_code == 401
    assert log_in_with_code(app.test_client(), codes[4]).status_code == 302
    assert len(AdminUser.get(AdminUser.username == "ops").recovery_codes) == 8


def test_new_recovery_codes_need_a_code_and_replace_the_old_ones(app, enrolled, clock):
    secret, old_codes = enrolled
    client = app.test_client()
    assert log_in_with_code(client, code_at(secret)).status_code == 302
    assert post_code(client, ENROL, "000000", action="recovery-codes").status_code == 400

    clock.tick(STEP)
    response = post_code(client, ENROL, code_at(secret), action="recovery-codes")

    new_codes = shown_recovery_codes(text(response))
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    assert log_in_with_code(app.test_client(), old_codes[0]).status_code == 401
    assert log_in_with_code(app.test_client(), new_codes[0]).status_code == 302


def test_turning_two_factor_off_needs_a_valid_code(app, enrolled, clock):
    secret, _codes = enrolled
    client = app.test_client()
    assert log_in_with_code(client, code_at(secret)).status_code == 302

    assert post_code(client, ENROL, code_at(secret, 7), action="disable").status_code == 400
    assert AdminUser.get(AdminUser.username == "ops").has_two_factor
    clock.tick(STEP)
    assert post_code(client, ENROL, code_at(secret), action="disable").status_code == 302

    user = AdminUser.get(AdminUser.username == "ops")
    assert (user.totp_enabled_at, user.totp_secret_encrypted, user.recovery_codes) == (None, None, [])
    assert log_in(app.test_client()).headers["Location"] == "/admin/"
    # Enrolling again shows a new secret.
    assert shown_secret(text(client.get(ENROL))) != secret


def test_required_two_factor_sends_a_new_user_to_enrolment_and_blocks_other_pages(app_with, admin_user, clock):
    app = app_with(require_2fa=True)
    client = app.test_client()
    assert log_in(client).headers["Location"] == ENROL
    for path in ADMIN_PAGES:
        answer = client.get(path)
        assert answer.status_code == 302 and answer.headers["Location"] == ENROL, path
    assert client.get("/admin/login/").headers["Location"] == ENROL
    token = csrf_token(client, ENROL)
    client.post("/admin/aiconfiguration/new/", data={"name": "x", "model_name": "openai/gpt-4o", "csrf_token": token})
    assert AIConfiguration.select().count() == 0
    assert "requires two-factor login" in text(client.get(ENROL))

    enrol(client)

    for path in ADMIN_PAGES:
        assert client.get(path).status_code == 200, path


def test_without_require_2fa_a_user_without_it_logs_in_with_the_password(app, admin_user):
    client = app.test_client()
    assert log_in(client).headers["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


@pytest.fixture
def quick_ops(services):
    """`ops` with a cheaply hashed password, so a hundred wrong guesses take no scrypt time."""
    return AdminUser.create(username="ops", password_hash=generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000"))


def guessing_run(app, username: str = "ops") -> None:
    """A hundred wrong passwords for `username`, five from each of twenty addresses."""
    attacker = app.test_client()
    statuses = [attempt(attacker, f"guess {number}", address, username).status_code
                for address in ATTACK_ADDRESSES for number in range(5)]
    assert statuses == [401] * 100


def test_after_a_guessing_run_the_user_still_gets_in_from_a_known_address(app, quick_ops):
    assert attempt(app.test_client(), PASSWORD, OPERATOR).status_code == 302
    guessing_run(app)

    assert attempt(app.test_client(), PASSWORD, OPERATOR).status_code == 302


def test_after_a_guessing_run_a_user_with_two_factor_gets_in_from_a_new_address(app, quick_ops, clock):
    client = app.test_client()
    assert attempt(client, PASSWORD, OPERATOR).status_code == 302
    secret, _codes = enrol(client)
    clock.tick(STEP)
    guessing_run(app)

    assert log_in_with_code(app.test_client(), code_at(secret), NEW_ADDRESS).status_code == 302


def test_after_a_guessing_run_a_user_without_two_factor_stays_shut_out_of_a_new_address(app, quick_ops):
    assert attempt(app.test_client(), PASSWORD, OPERATOR).status_code == 302
    guessing_run(app)

    refused = attempt(app.test_client(), PASSWORD, NEW_ADDRESS)
    assert refused.status_code == 429
    assert "Try again in 60 minute(s)." in text(refused)


def test_a_known_address_still_backs_off_after_its_own_failures(app, quick_ops):
    assert attempt(app.test_client(), PASSWORD, ATTACKER).status_code == 302
    statuses = [attempt(app.test_client(), "wrong guess", ATTACKER).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    assert attempt(app.test_client(), PASSWORD, ATTACKER).status_code == 429


def test_audit_rows_name_what_happened_but_never_a_password_or_code(app, enrolled):
    secret, codes = enrolled
    client = app.test_client()
    wrong_code = code_at(secret, 8)
    assert attempt(client, "not the password", OPERATOR).status_code == 401
    assert log_in_with_code(client, wrong_code).status_code == 401
    right_code = code_at(secret)
    assert post_code(client, VERIFY, right_code).status_code == 302
    client.post("/admin/logout/", data={"csrf_token": csrf_token(client, "/admin/")})

    rows = list(AuditEvent.select().order_by(AuditEvent.id))
    assert [(row.action, row.actor, row.target, row.detail) for row in rows] == [
        ("login", "ops", "ops", "password"),
        ("2fa_enabled", "ops", "ops", ""),
        ("logout", "ops", "ops", ""),
        ("login_failed", "", "ops", "password"),
        ("login_failed", "", "ops", "code"),
        ("login", "ops", "ops", "2fa"),
        ("logout", "ops", "ops", ""),
    ]
    assert {row.address for row in rows[3:-1]} == {OPERATOR}
    secrets_used = [PASSWORD, "not the password", wrong_code, right_code, secret, *codes]
    for row in rows:
        for column in (row.actor, row.address, row.action, row.target, row.detail):
            assert not any(used in column for used in secrets_used), column


def test_reset_two_factor_clears_the_secret_the_step_and_the_recovery_codes(enrolled):
    user = AdminUser.get(AdminUser.username == "ops")
    assert user.totp_last_step > 0 and user.recovery_codes

    two_factor.reset_two_factor(user)

    stored = AdminUser.get_by_id(user.id)
    assert (stored.totp_secret_encrypted, stored.totp_enabled_at, stored.totp_last_step, stored.recovery_codes) == (
        None, None, 0, [])


def test_create_admin_makes_an_owner_who_logs_in_with_the_password(app, cli, services):
    assert cli("create-admin", "--username", "ops", "--password-stdin", input=f"{PASSWORD}\n").exit_code == 0
    assert AdminUser.get(AdminUser.username == "ops").role == "owner"
    assert log_in(app.test_client()).headers["Location"] == "/admin/"


def test_passing_the_username_ceiling_leaves_the_address_ceiling_in_place(redis):
    throttle = auth.LoginThrottle(redis)
    for number in range(100):
        assert throttle.claim("ops", f"192.0.2.{number}") == 0
    assert throttle.claim("ops", OPERATOR) > 0
    assert throttle.claim("ops", OPERATOR, past_username_ceiling=True) == 0
    for number in range(100):
        throttle.claim(f"guess{number}", ATTACKER)

    assert throttle.claim("ops", ATTACKER, past_username_ceiling=True) > 0
