"""Twilio's request signature: which URL it was made for, and whether it matches."""
from __future__ import annotations

import logging
from functools import lru_cache
from urllib.parse import parse_qs, urlparse

from flask import request
from twilio.request_validator import RequestValidator, add_port, compare, remove_port

log = logging.getLogger(__name__)


def signed_url(public_base_url: str) -> str:
    """Rebuild the URL Twilio signed: the public origin (or the proxied one) + raw path + query."""
    raw_path = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not raw_path:
        query = request.query_string.decode("latin-1")
        raw_path = request.script_root + request.path + (f"?{query}" if query else "")
    origin = public_base_url or request.host_url.rstrip("/")
    return origin + raw_path


def signature_problem(auth_token: str, public_base_url: str) -> str | None:
    """Check X-Twilio-Signature; return why the request is not Twilio's, or None when it is."""
    signature = request.headers.get("X-Twilio-Signature")
    if not auth_token:
        return "TWILIO_AUTH_TOKEN is not set, so no request can be verified"
    if not signature:
        return "X-Twilio-Signature header is missing"
    url = signed_url(public_base_url)
    # Twilio's JSON variant signs the URL (which carries bodySHA256) and hashes the raw body.
    # parse_qs drops a blank bodySHA256, which would then pass for a form post: refuse it first.
    body_hash = parse_qs(urlparse(url).query).get("bodySHA256")
    if "bodySHA256" in request.args and not body_hash:
        return "bodySHA256 is blank"
    validator = _validator(auth_token)
    if not _signature_matches(validator, url, {} if body_hash else request.form, signature):
        return "X-Twilio-Signature does not match (check PUBLIC_BASE_URL and the proxy setup)"
    if body_hash and not compare(validator.compute_hash(request.get_data(as_text=True)), body_hash[0]):
        return "the body does not match bodySHA256"
    return None


def _signature_matches(validator: RequestValidator, url: str, params, signature: str) -> bool:
    """Twilio signs the URL either with its port or without, so its validator computes both HMACs
    for every request. Compute the second only when the first does not match: one per genuine
    request on the hot path, the same two for a forged one."""
    parsed = urlparse(url)
    return any(compare(validator.compute_signature(candidate, params), signature)
               for candidate in (remove_port(parsed), add_port(parsed)))


@lru_cache(maxsize=4)
def _validator(auth_token: str) -> RequestValidator:
    """Return the validator for this token, built once rather than per request."""
    return RequestValidator(auth_token)

