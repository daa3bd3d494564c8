"""Admin login: server-side sessions, password checks and throttling of failed attempts."""
from __future__ import annotations

import hashlib
import math
import secrets
from urllib.parse import urlparse

from flask import session
from flask.sessions import SecureCookieSessionInterface
from flask_admin.form import SecureForm
from redis import Redis
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from chatbot.models import AdminUser, utcnow

# The cookie carries only this random id; what it stands for lives in Redis, so it can be revoked.
SESSION_ID = "admin_session"
# An admin session unused this long ends; every admin request restarts the clock.
ADMIN_IDLE_SECONDS = 30 * 60
# Between a right password and the second factor: the id of a half-login, which opens no page.
PENDING_ID = "admin_pending"
# A half-login not finished with a code within this time ends; it is never extended.
PENDING_SECONDS = 5 * 60
# A successful login from an address lets that (user, address) pass the username ceiling this long.
KNOWN_ADDRESS_SECONDS = 30 * 24 * 3600


class SessionsForPeopleOnly(SecureCookieSessionInterface):
    """Flask's cookie session, opened only where a person may be logged in. Twilio's posts, health
    probes and metrics scrapes never carry the cookie, and unsigning nothing still costs the webhook
    a serializer per request; on those paths Flask gets its null session, which refuses writes."""

    def __init__(self, sessionless_paths: tuple[str, ...]):
        self.sessionless_paths = frozenset(sessionless_paths)

    def open_session(self, app, request):
        if request.path in self.sessionless_paths:
            return None
        return super().open_session(app, request)


class LoginForm(SecureForm):
    """The login form, CSRF-protected like every admin form."""

    username = StringField("Username", validators=[DataRequired(), Length(max=80)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


class AdminSessions:
    """Admin sessions kept in Redis: each maps an id to its user and password stamp, expiring when idle."""

    def __init__(self, redis: Redis, idle_seconds: int = ADMIN_IDLE_SECONDS):
        self.redis = redis
        self.idle_seconds = idle_seconds

    @staticmethod
    def _key(session_id: str) -> str:
        return f"chatbot:admin-session:{session_id}"

    def start(self, user: AdminUser) -> str:
        """Store a new session for `user` and return its id."""
        session_id = secrets.token_urlsafe(32)
        self.redis.set(self._key(session_id), f"{user.id}:{user.session_stamp()}", ex=self.idle_seconds)
        return session_id

    def touch(self, session_id: str) -> tuple[int, str] | None:
        """Return the session's (user id, password stamp) and restart its idle clock; None once ended."""
        with self.redis.pipeline() as pipe:
            pipe.get(self._key(session_id)).expire(self._key(session_id), self.idle_seconds)
            value, _ = pipe.execute()
        if value is None:
            return None
        user_id, _, stamp = value.decode().partition(":")
        return int(user_id), stamp

    def end(self, session_id: str) -> None:
        self.redis.delete(self._key(session_id))

    @staticmethod
    def _pending_key(pending_id: str) -> str:
        return f"chatbot:admin-pending:{pending_id}"

    def start_pending(self, user: AdminUser) -> str:
        """Store a half-login for `user` (password right, code still due) and return its id."""
        pending_id = secrets.token_urlsafe(32)
        self.redis.set(self._pending_key(pending_id), f"{user.id}:{user.session_stamp()}", ex=PENDING_SECONDS)
        return pending_id

    def pending(self, pending_id: str) -> tuple[int, str] | None:
        """Return the half-login's (user id, password stamp); None once it ended or timed out."""
        value = self.redis.get(self._pending_key(pending_id))
        if value is None:
            return None
        user_id, _, stamp = value.decode().partition(":")
        return int(user_id), stamp

    def end_pending(self, pending_id: str) -> None:
        self.redis.delete(self._pending_key(pending_id))


# One call decides and counts, so parallel attempts cannot all pass one check before any is counted.
# KEYS: pair attempts, pair lock, username attempts, address attempts.
# ARGV: free pair attempts, longest pair wait, pair memory, username ceiling, address ceiling, ceiling window,
# 1 when this attempt passes the username ceiling (see `claim_attempt`), else 0.
# Returns the milliseconds to wait, or 0 when this attempt may check the password.
CLAIM_ATTEMPT = """
local locked = redis.call('PTTL', KEYS[2])
if locked > 0 then return locked end
for index, ceiling in ipairs({ARGV[4], ARGV[5]}) do
  local key = KEYS[index + 2]
  local passes = index == 1 and ARGV[7] == '1'
  if not passes and tonumber(redis.call('GET', key) or '0') >= tonumber(ceiling) then
    return math.max(redis.call('PTTL', key), 1)
  end
end
for index = 3, 4 do
  if redis.call('INCR', KEYS[index]) == 1 then redis.call('EXPIRE', KEYS[index], ARGV[6]) end
end
local attempts = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local over = attempts - tonumber(ARGV[1])
if over >= 0 then
  redis.call('SET', KEYS[2], 1, 'EX', math.min(60 * 2 ^ over, tonumber(ARGV[2])))
end
return 0
"""

# A right password clears its pair's record and gives its attempt back to the ceilings.
FORGIVE_ATTEMPT = """
redis.call('DEL', KEYS[1], KEYS[2])
for index = 3, 4 do
  if tonumber(redis.call('GET', KEYS[index]) or '0') > 0 then redis.call('DECR', KEYS[index]) end
end
return 0
"""


class LoginThrottle:
    """Limits password checks per (username, address) with backoff, under per-username and per-address ceilings.

    An attacker's failures slow down only their own address for that username, so the operator can
    still log in from another; the ceilings stop a spread-out guessing run.
    """

    def __init__(self, redis: Redis, free_attempts: int = 5, longest_wait: int = 15 * 60,
                 per_username: int = 100, per_address: int = 100, ceiling_window: int = 3600):
        self.redis = redis
        self.free_attempts = free_attempts
        self.longest_wait = longest_wait
        self.per_username = per_username
        self.per_address = per_address
        self.ceiling_window = ceiling_window
        self._claim = redis.register_script(CLAIM_ATTEMPT)
        self._forgive = redis.register_script(FORGIVE_ATTEMPT)

    @staticmethod
    def _keys(username: str, address: str) -> list[str]:
        user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:24]
        return [f"chatbot:login:pair:{user}:{address}", f"chatbot:login:lock:{user}:{address}",
                f"chatbot:login:user:{user}", f"chatbot:login:addr:{address}"]

    def claim(self, username: str, address: str, past_username_ceiling: bool = False) -> int:
        """Count an attempt; return 0 when it may check the password, else the seconds to wait.

        `past_username_ceiling` lets the attempt through a full per-username ceiling (it is still
        counted, and the pair's backoff and the address ceiling still apply).
        """
        # The pair's record outlives its longest wait, so backoff keeps growing across waits.
        wait_ms = self._claim(keys=self._keys(username, address), args=[
            self.free_attempts, self.longest_wait, 4 * self.longest_wait,
            self.per_username, self.per_address, self.ceiling_window, int(past_username_ceiling)])
        return math.ceil(int(wait_ms) / 1000)

    def forgive(self, username: str, address: str) -> None:
        """Clear the record of (username, address) after a successful login."""
        self._forgive(keys=self._keys(username, address))

    @staticmethod
    def _known_key(username: str, address: str) -> str:
        user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:24]
        return f"chatbot:login:known:{user}:{address}"

    def remember(self, username: str, address: str) -> None:
        """Note that `username` logged in from `address`, for KNOWN_ADDRESS_SECONDS from now."""
        self.redis.set(self._known_key(username, address), 1, ex=KNOWN_ADDRESS_SECONDS)

    def known(self, username: str, address: str) -> bool:
        """Whether `username` logged in from `address` within KNOWN_ADDRESS_SECONDS."""
        return bool(self.redis.exists(self._known_key(username, address)))


def claim_attempt(throttle: LoginThrottle, username: str, address: str) -> int:
    """Count a password or code attempt; return 0 when it may be checked, else the seconds to wait.

    Strangers filling the per-username ceiling must not lock an owner out, so the ceiling does not
    stop a user with two-factor login on (the code still guards them) nor an address that user
    logged in from before. The pair's backoff and the per-address ceiling hold for everyone.
    """
    user = AdminUser.get_or_none(AdminUser.username == username.strip())
    passes = (user is not None and user.has_two_factor) or throttle.known(username, address)
    return throttle.claim(username, address, past_username_ceiling=passes)


def authenticate(username: str, password: str) -> AdminUser | None:
    """Return the admin user for valid credentials, else None."""
    user = AdminUser.get_or_none(AdminUser.username == username.strip())
    if user is None:
        # Hash anyway so a wrong username takes as long as a wrong password.
        AdminUser(password_hash="").set_password(password)
        return None
    return user if user.check_password(password) else None


def log_in(user: AdminUser, sessions: AdminSessions) -> None:
    """Start a fresh session for `user` (a new id defeats fixation; the old one is ended)."""
    log_out(sessions)
    session.permanent = True
    session[SESSION_ID] = sessions.start(user)
    AdminUser.update(last_login_at=utcnow()).where(AdminUser.id == user.id).execute()


def log_out(sessions: AdminSessions) -> None:
    """End the session (and any half-login) on the server too, so a copy of the cookie stops working."""
    session_id = session.pop(SESSION_ID, None)
    pending_id = session.pop(PENDING_ID, None)
    session.clear()
    if session_id:
        sessions.end(session_id)
    if pending_id:
        sessions.end_pending(pending_id)


def start_half_login(user: AdminUser, sessions: AdminSessions) -> None:
    """After a right password for a user with two-factor login: remember who, until the code comes."""
    log_out(sessions)
    session[PENDING_ID] = sessions.start_pending(user)


def half_logged_in(sessions: AdminSessions) -> AdminUser | None:
    """Return the user whose password was right and whose code is still due; None when there is none."""
    pending_id = session.get(PENDING_ID)
    if not pending_id:
        return None
    held = sessions.pending(pending_id)
    user = AdminUser.get_or_none(AdminUser.id == held[0]) if held else None
    if user is None or held[1] != user.session_stamp() or not user.has_two_factor:
        log_out(sessions)
        return None
    return user


def current_admin(sessions: AdminSessions) -> AdminUser | None:
    """Return the logged-in admin while the session lives (not logged out, idle or from before a reset)."""
    session_id = session.get(SESSION_ID)
    if not session_id:
        return None
    held = sessions.touch(session_id)
    user = AdminUser.get_or_none(AdminUser.id == held[0]) if held else None
    if user is None or held[1] != user.session_stamp():
        log_out(sessions)
        return None
    return user


def safe_next(target: str | None, default: str) -> str:
    """Only follow a post-login redirect to a plain path on this site's admin pages."""
    if not target or "\\" in target or any(ord(char) < 0x20 or ord(char) == 0x7F for char in target):
        return default
    parsed = urlparse(target)
    if parsed.scheme or parsed.netloc or not (parsed.path == "/admin" or parsed.path.startswith("/admin/")):
        return default
    return target


def create_or_reset_admin(username: str, password: str) -> tuple[AdminUser, bool]:
    """Create the admin user, or set a new password on an existing one; return (user, created).

    A new password changes the user's session stamp, which ends every session started before it.
    """
    user = AdminUser.get_or_none(AdminUser.username == username)
    created = user is None
    if created:
        user = AdminUser(username=username)
    user.set_password(password)
    user.save()
    return user, created
