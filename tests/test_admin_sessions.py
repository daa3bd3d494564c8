"""Admin sessions end on the server (logout, reset, idle), and failed logins slow only the one guessing."""
from __future__ import annotations

import threading

import pytest

from chatbot import auth
from chatbot.models import AdminUser
from tests.conftest import PASSWORD, csrf_token, log_in, wait_for
from tests.test_cli_errors import nowhere

ATTACKER = "203.0.113.9"
OPERATOR = "198.51.100.7"


def replay(app, cookie: str):
    """A fresh browser that presents a copied session cookie."""
    browser = app.test_client()
    browser.set_cookie("session", cookie)
    return browser


def attempt(client, password: str, address: str, username: str = "ops"):
    """One login from `address` (the peer's address: no proxy is trusted by default)."""
    token = csrf_token(client, "/admin/login/")
    return client.post("/admin/login/", environ_base={"REMOTE_ADDR": address},
                       data={"username": username, "password": password, "csrf_token": token})


def session_keys(redis) -> list[bytes]:
    return list(redis.scan_iter("chatbot:admin-session:*"))


def let_the_wait_pass(redis) -> None:
    """Stand in for the minutes a locked-out (username, address) waits."""
    for key in redis.scan_iter("chatbot:login:lock:*"):
        redis.delete(key)


def test_a_cookie_copied_before_logout_no_longer_opens_the_panel(app, operator):
    copied = operator.get_cookie("session").value
    assert replay(app, copied).get("/admin/").status_code == 200

    operator.post("/admin/logout/", data={"csrf_token": csrf_token(operator, "/admin/")})

    response = replay(app, copied).get("/admin/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login/")


def test_a_password_reset_from_the_command_line_revokes_open_sessions(app, operator, redis):
    copied = operator.get_cookie("session").value
    reset = app.test_cli_runner().invoke(args=["create-admin", "--username", "ops", "--password-stdin"],
                                         input="a brand new password\n")
    assert reset.exit_code == 0, reset.output

    assert replay(app, copied).get("/admin/").status_code == 302
    assert operator.get("/admin/").status_code == 302
    assert session_keys(redis) == []


def test_an_idle_session_ends_and_activity_keeps_it_alive(redis, admin_user):
    sessions = auth.AdminSessions(redis, idle_seconds=60)
    session_id = sessions.start(admin_user)
    [key] = session_keys(redis)
    assert 55 < redis.ttl(key) <= 60
    redis.expire(key, 5)  # most of the idle time has passed
    assert sessions.touch(session_id) == (admin_user.id, admin_user.session_stamp())
    assert 55 < redis.ttl(key) <= 60  # the touch restarted the clock
    redis.pexpire(key, 1)  # the idle time passes
    assert wait_for(lambda: not redis.exists(key), timeout=5)
    assert sessions.touch(session_id) is None


def test_every_admin_request_restarts_the_idle_clock_and_an_idle_cookie_is_refused(operator, redis):
    [key] = session_keys(redis)
    redis.expire(key, 5)
    assert operator.get("/admin/").status_code == 200
    assert redis.ttl(key) > auth.ADMIN_IDLE_SECONDS - 5

    redis.pexpire(key, 1)  # the idle timeout passes
    assert wait_for(lambda: not redis.exists(key), timeout=5)
    assert operator.get("/admin/").status_code == 302


def test_the_cookie_carries_only_an_opaque_session_id(app, operator):
    from flask.sessions import SecureCookieSessionInterface

    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    contents = serializer.loads(operator.get_cookie("session").value)
    assert set(contents) == {auth.SESSION_ID, "_permanent"}


def test_with_redis_down_a_valid_cookie_gets_the_login_page_not_a_traceback(app_with, operator):
    copied = operator.get_cookie("session").value
    broken = app_with(redis_url=nowhere("redis"))
    browser = replay(broken, copied)

    panel = browser.get("/admin/")
    assert panel.status_code == 302 and panel.headers["Location"].startswith("/admin/login/")
    page = browser.get("/admin/login/")
    assert page.status_code == 503
    assert "Redis, which keeps the admin sessions, cannot be reached" in page.get_data(as_text=True)

    fresh = broken.test_client()
    refused = log_in(fresh)
    assert refused.status_code == 503
    assert "Traceback" not in refused.get_data(as_text=True)


def test_an_attacker_cannot_lock_the_operator_out(app, admin_user):
    attacker = app.test_client()
    statuses = [attempt(attacker, "guess guess", ATTACKER).status_code for _ in range(12)]
    assert statuses == [401] * 5 + [429] * 7

    assert attempt(app.test_client(), PASSWORD, OPERATOR).status_code == 302


def test_repeated_failures_from_one_address_back_off_doubling_up_to_fifteen_minutes(redis):
    throttle = auth.LoginThrottle(redis)
    assert [throttle.claim("ops", ATTACKER) for _ in range(5)] == [0] * 5
    waits = []
    for _ in range(6):
        waits.append(throttle.claim("ops", ATTACKER))
        let_the_wait_pass(redis)
        assert throttle.claim("ops", ATTACKER) == 0
    assert waits == [60, 120, 240, 480, 900, 900]
    assert throttle.claim("ops", OPERATOR) == 0
    assert throttle.claim("another-user", ATTACKER) == 0


def test_a_right_password_clears_the_record_of_its_address(app, admin_user, redis):
    operator = app.test_client()
    for _ in range(4):
        assert attempt(operator, "typo typo", OPERATOR).status_code == 401
    assert attempt(operator, PASSWORD, OPERATOR).status_code == 302
    assert auth.LoginThrottle(redis).claim("ops", OPERATOR) == 0
    assert list(redis.scan_iter("chatbot:login:lock:*")) == []


def test_a_spread_out_guessing_run_meets_the_username_ceiling(app, admin_user, redis):
    throttle = auth.LoginThrottle(redis)
    for number in range(100):
        assert throttle.claim("ops", f"192.0.2.{number}") == 0

    refused = attempt(app.test_client(), PASSWORD, OPERATOR)
    assert refused.status_code == 429
    assert "Try again in 60 minute(s)." in refused.get_data(as_text=True)


def test_one_address_spraying_usernames_meets_the_address_ceiling(redis):
    throttle = auth.LoginThrottle(redis)
    for number in range(100):
        assert throttle.claim(f"guess{number}", ATTACKER) == 0
    assert throttle.claim("ops", ATTACKER) > 0
    assert throttle.claim("ops", OPERATOR) == 0


def test_thirty_parallel_bad_logins_check_at_most_five_passwords(app, admin_user, monkeypatch):
    checks = []
    check_password = AdminUser.check_password
    monkeypatch.setattr(AdminUser, "check_password",
                        lambda user, password: checks.append(password) or check_password(user, password))
    browsers = [app.test_client() for _ in range(30)]
    tokens = [csrf_token(browser, "/admin/login/") for browser in browsers]
    start = threading.Barrier(len(browsers))
    statuses = []

    def guess(browser, token):
        start.wait()
        statuses.append(browser.post("/admin/login/", environ_base={"REMOTE_ADDR": ATTACKER},
                                     data={"username": "ops", "password": "guess guess", "csrf_token": token})
                        .status_code)

    threads = [threading.Thread(target=guess, args=pair) for pair in zip(browsers, tokens, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(checks) == 5
    assert sorted(statuses) == [401] * 5 + [429] * 25


@pytest.mark.parametrize("target", [
    "/admin/\r\nSet-Cookie: stolen=1",
    "/admin/\nLocation: https://evil.example/",
    "https://evil.example/admin/",
    "//evil.example/admin/",
    "/\\evil.example/admin/",
    "\\\\evil.example\\admin",
    "/admin\\..\\..\\evil",
    "javascript:alert(1)",
    "/adminevil",
    "/static/x",
])
def test_login_redirect_junk_falls_back_to_the_panel(client, admin_user, target):
    token = csrf_token(client, "/admin/login/")
    response = client.post("/admin/login/", query_string={"next": target},
                           data={"username": "ops", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/"


def test_login_redirect_to_an_admin_page_is_kept(client, admin_user):
    token = csrf_token(client, "/admin/login/")
    response = client.post("/admin/login/", query_string={"next": "/admin/message/?page=2"},
                           data={"username": "ops", "password": PASSWORD, "csrf_token": token})
    assert response.headers["Location"] == "/admin/message/?page=2"
