"""GET /: whoever opens the service's bare address (the URL `make run` prints, a platform's link) is
led to the admin panel, not left at a 404."""
from __future__ import annotations

from flask import Blueprint, redirect, url_for

bp = Blueprint("home", __name__)


@bp.get("/")
def home():
    """Send a visitor to the admin panel (its login page when they are not signed in)."""
    return redirect(url_for("admin.index"))
