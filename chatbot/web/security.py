"""Transport protections for every response: size limit, https, security headers."""
from __future__ import annotations

from collections.abc import Callable

from flask import Response, redirect, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

HSTS = "max-age=31536000; includeSubDomains"
# Platform probes call /health over plain http inside the platform's network.
HTTPS_EXEMPT = ("/health",)
# The admin dashboard's policy: scripts, styles, images and fetches from this origin only (no CDN, no
# inline script; its figures travel in a JSON island, which is data, not script). Inline style
# attributes stay allowed: Bootstrap's markup and Chart.js's canvas sizing use them.
DASHBOARD_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                 "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def init_app(app, config, on_refused: Callable[[int, str, str], None] | None = None) -> None:
    """Trust `TRUSTED_PROXIES` hops, cap request bodies, optionally force https, add headers.

    `on_refused(status, verdict, reason)` hears of each request turned away here, its body unread.
    """
    refused = on_refused or (lambda status, verdict, reason: None)
    if config.trusted_proxies:
        hops = config.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_error):
        reason = f"request body larger than {config.max_request_bytes} bytes"
        refused(413, "too_large", reason)
        return Response(f"{reason}\n", status=413, mimetype="text/plain")

    if config.force_https:
        @app.before_request
        def _require_https():
            if not request.is_secure and request.path not in HTTPS_EXEMPT:
                refused(308, "redirected_to_https", "plain http redirected to https")
                # 308 keeps the method and body of a POST.
                return redirect(request.url.replace("http://", "https://", 1), code=308)

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if request.is_secure:
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        return response
