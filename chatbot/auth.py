"""Admin login: sessions, password checks and throttling of failed attempts."""
from __future__ import annotations

import hashlib
from urllib.parse import urlparse

from flask import session
from flask_admin.form import SecureForm
from redis import Redis
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from chatbot.models import AdminUser, utcnow

SESSION_USER = "admin_user_id"
SESSION_STAMP = "admin_stamp"


class LoginForm(SecureForm):
    """The login form, CSRF-protected like every admin form."""

    username = StringField("Username", validators=[DataRequired(), Length(max=80)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


class LoginThrottle:
    """Counts failed logins per username and per client address in Redis, over a window."""

    def __init__(self, redis: Redis, per_user: int = 5, per_address: int = 20, window: int = 900):
        self.redis = redis
        self.per_user = per_user
        self.per_address = per_address
        self.window = window

    def _keys(self, username: str, address: str) -> tuple[str, str]:
        user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:24]
        return f"chatbot:login-failures:user:{user}", f"chatbot:login-failures:addr:{address}"

    def retry_after(self, username: str, address: str) -> int:
        """Return the seconds until another attempt is allowed (0 when allowed now)."""
        user_key, address_key = self._keys(username, address)
        with self.redis.pipeline() as pipe:
            pipe.get(user_key).ttl(user_key).get(address_key).ttl(address_key)
            user_count, user_ttl, address_count, address_ttl = pipe.execute()
        waits = []
        if user_count and int(user_count) >= self.per_user:
            waits.append(user_ttl)
        if address_count and int(address_count) >= self.per_address:
            waits.append(address_ttl)
        return max([w for w in waits if w and w > 0], default=0)

    def record_failure(self, username: str, address: str) -> None:
        with self.redis.pipeline() as pipe:
            for key in self._keys(username, address):
                # The window starts at the first failure (SET NX keeps its expiry; Redis 6 compatible).
                pipe.set(key, 0, ex=self.window, nx=True)
                pipe.incr(key)
            pipe.execute()

    def forget(self, username: str, address: str) -> None:
        """Clear the username's failures after a successful login."""
        self.redis.delete(self._keys(username, address)[0])


def authenticate(username: str, password: str) -> AdminUser | None:
    """Return the admin user for valid credentials, else None."""
    user = AdminUser.get_or_none(AdminUser.username == username.strip())
    if user is None:
        # Hash anyway so a wrong username takes as long as a wrong password.
        AdminUser(password_hash="").set_password(password)
        return None
    return user if user.check_password(password) else None


def log_in(user: AdminUser) -> None:
    """Start a fresh session for `user` (a new session defeats fixation)."""
    session.clear()
    session.permanent = True
    session[SESSION_USER] = user.id
    session[SESSION_STAMP] = user.session_stamp()
    AdminUser.update(last_login_at=utcnow()).where(AdminUser.id == user.id).execute()


def log_out() -> None:
    session.clear()


def current_admin() -> AdminUser | None:
    """Return the logged-in admin, if the session is still valid (user exists, password unchanged)."""
    user_id = session.get(SESSION_USER)
    if user_id is None:
        return None
    user = AdminUser.get_or_none(AdminUser.id == user_id)
    if user is None or session.get(SESSION_STAMP) != user.session_stamp():
        return None
    return user


def safe_next(target: str | None, default: str) -> str:
    """Only follow a post-login redirect that stays on this site's admin pages."""
    if not target:
        return default
    parsed = urlparse(target)
    if parsed.scheme or parsed.netloc or not parsed.path.startswith("/admin"):
        return default
    return target


def create_or_reset_admin(username: str, password: str) -> tuple[AdminUser, bool]:
    """Create the admin user, or set a new password on an existing one; return (user, created)."""
    user = AdminUser.get_or_none(AdminUser.username == username)
    created = user is None
    if created:
        user = AdminUser(username=username)
    user.set_password(password)
    user.save()
    return user, created
