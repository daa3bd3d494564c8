"""Transport protections for every response: size limit, https, security headers."""
from __future__ import annotations

from flask import Response, redirect, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

HSTS = "max-age=31536000; includeSubDomains"
# Platform probes call /health over plain http inside the platform's network.
HTTPS_EXEMPT = ("/health",)


def init_app(app, config) -> None:
    """Trust `TRUSTED_PROXIES` hops, cap request bodies, optionally force https, add headers."""
    if config.trusted_proxies:
        hops = config.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_error):
        return Response(f"request body larger than {config.max_request_bytes} bytes\n", status=413,
                        mimetype="text/plain")

    if config.force_https:
        @app.before_request
        def _require_https():
            if not request.is_secure and request.path not in HTTPS_EXEMPT:
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
