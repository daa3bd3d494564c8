"""One call to an operator's tool: arguments checked against its schema, templates filled (never
evaluated), the request sent through the outbound guard, the answer cut to what a model should read."""
from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from jsonschema import Draft202012Validator

from chatbot.crypto import FieldCipher, SecretDecryptionError
from chatbot.models import Tool, ToolAuth, ToolUseStatus
from chatbot.outbound import MAX_REDIRECTS, AddressRefused, refused_in, unreachable
from chatbot.redact import mask_phones_in
from chatbot.tools.definitions import fill_body, fill_url

# What goes back to the model of an answer: a few KB, marked when cut.
MAX_RESULT_BYTES = 4096
# What is read of an answer at most; the rest is never downloaded.
MAX_READ_BYTES = 256 * 1024
READ_CHUNK = 16 * 1024
# Words of argument names (order_card_number, api_key) whose values never reach the transcript.
SECRET_WORDS = frozenset({"password", "passcode", "secret", "token", "key", "pin", "cvv", "cvc", "card", "iban"})
MASK = "•••"


@dataclass(frozen=True)
class ToolResult:
    """What a call did: its status, what the model reads, and the figures the transcript shows."""

    status: ToolUseStatus
    content: str
    duration_ms: float = 0.0
    size: int | None = None
    error: str | None = None


def masked(arguments: dict, secret: str | None = None) -> dict:
    """The arguments as the transcript shows them: secret-looking names, the tool's own secret and
    phone numbers hidden."""
    def hide(value):
        if isinstance(value, str):
            return mask_phones_in(value.replace(secret, MASK) if secret else value)
        if isinstance(value, dict):
            return masked(value, secret)
        if isinstance(value, list):
            return [hide(item) for item in value]
        return value

    return {name: MASK if SECRET_WORDS & set(re.split(r"[^a-z0-9]+", str(name).lower())) else hide(value)
            for name, value in arguments.items()}


class ToolCaller:
    """Calls operator tools through `session` (a guarded one: no loopback, private or metadata
    address unless allowed), never at `own_host`."""

    def __init__(self, session: requests.Session, cipher: FieldCipher, own_host: str = "",
                 clock: Callable[[], float] = time.monotonic):
        self.session = session
        self.cipher = cipher
        self.own_host = own_host.lower()
        self.clock = clock

    def call(self, tool: Tool, arguments: dict, seconds_left: float) -> ToolResult:
        """Run `tool` with the model's `arguments` within `seconds_left`; a failure is a result the
        model reads ("error: …"), never an exception."""
        started = self.clock()
        errors = sorted(Draft202012Validator(tool.parameters).iter_errors(arguments), key=lambda error: error.path)
        if errors:
            where = "/".join(str(part) for part in errors[0].absolute_path) or "arguments"
            problem = f"{where}: {errors[0].message}"[:300]
            return ToolResult(ToolUseStatus.INVALID, f"error: the arguments do not fit the tool: {problem}",
                              error=problem)
        timeout = min(tool.timeout, seconds_left)
        if timeout <= 0.05:
            return ToolResult(ToolUseStatus.FAILED, "error: no time was left to call the tool", error="no time left")
        try:
            status, body, size = self._request(tool, arguments, started + timeout, timeout)
        except ToolFailure as failure:
            return ToolResult(ToolUseStatus.FAILED, f"error: {failure}", self._since(started), error=str(failure))
        text = body.decode("utf-8", errors="replace")
        if status >= 400:
            problem = f"HTTP {status}"
            return ToolResult(ToolUseStatus.FAILED, f"error: the tool answered {problem}: {_cut(text)}",
                              self._since(started), size, error=problem)
        return ToolResult(ToolUseStatus.OK, _cut(text) or "(empty answer)", self._since(started), size)

    def secret_of(self, tool: Tool) -> str | None:
        if not tool.secret_encrypted:
            return None
        try:
            return self.cipher.decrypt(tool.secret_encrypted)
        except SecretDecryptionError as error:
            raise ToolFailure("its secret cannot be decrypted (FIELD_ENCRYPTION_KEY changed?)") from error

    def _headers(self, tool: Tool) -> dict:
        headers = {"Accept": "application/json, text/plain;q=0.9, */*;q=0.5"}
        secret = self.secret_of(tool)
        if tool.auth == ToolAuth.BEARER.value and secret:
            headers["Authorization"] = f"Bearer {secret}"
        elif tool.auth == ToolAuth.BASIC.value and secret:
            headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode("ascii")
        elif tool.auth == ToolAuth.HEADER.value and secret:
            headers[tool.auth_header] = secret
        return headers

    def _request(self, tool: Tool, arguments: dict, ends: float, timeout: float) -> tuple[int, bytes, int]:
        """Send the filled request, following redirects ourselves so each hop is checked; return
        (status, the first MAX_READ_BYTES of the body, its size)."""
        headers = self._headers(tool)
        url = fill_url(tool.url_template, arguments)
        method = tool.method
        body = fill_body(tool.body_template, arguments).encode() if tool.body_template and method == "POST" else None
        if body is not None:
            headers["Content-Type"] = "application/json"
        for _hop in range(MAX_REDIRECTS + 1):
            self._refuse_own_host(url)
            left = ends - self.clock()
            if left <= 0:
                raise ToolFailure(f"no answer within {round(timeout, 1):g}s")
            try:
                response = self.session.request(method, url, data=body, headers=headers, timeout=(min(left, 5.0), left),
                                                stream=True, allow_redirects=False)
            except AddressRefused as refused:
                raise ToolFailure(f"refused: {refused}") from refused
            except requests.Timeout as error:
                raise ToolFailure(f"no answer within {round(timeout, 1):g}s") from error
            except requests.RequestException as error:
                refusal = refused_in(error)
                if refusal is not None:
                    raise ToolFailure(f"refused: {refusal}") from error
                raise ToolFailure(f"could not connect: {unreachable(error)}") from error
            try:
                if response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    if response.status_code in (301, 302, 303):
                        method, body = "GET", None
                        headers.pop("Content-Type", None)
                    if urlsplit(url).hostname != urlsplit(tool.url_template).hostname:
                        # Credentials go only to the host the operator named.
                        headers.pop("Authorization", None)
                        headers.pop(tool.auth_header, None) if tool.auth_header else None
                    continue
                raw, size = self._read(response, ends, timeout)
                return response.status_code, raw, size
            finally:
                response.close()
        raise ToolFailure(f"more than {MAX_REDIRECTS} redirects")

    def _refuse_own_host(self, url: str) -> None:
        host = (urlsplit(url).hostname or "").lower()
        if self.own_host and host == self.own_host:
            raise ToolFailure(f"refused: {host} is this service's own host")

    def _read(self, response: requests.Response, ends: float, timeout: float) -> tuple[bytes, int]:
        chunks, size = [], 0
        try:
            while chunk := response.raw.read1(READ_CHUNK, decode_content=True):
                size += len(chunk)
                if size <= MAX_READ_BYTES:
                    chunks.append(chunk)
                else:
                    break  # enough for the model: the rest is never read
                if self.clock() > ends:
                    raise ToolFailure(f"no answer within {round(timeout, 1):g}s")
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ToolFailure(f"the answer broke off: {error.__class__.__name__}") from error
        return b"".join(chunks)[:MAX_READ_BYTES], size

    def _since(self, started: float) -> float:
        return (self.clock() - started) * 1000


class ToolFailure(Exception):
    """A call that did not get an answer, in words the model and the operator read."""


def _cut(text: str) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_RESULT_BYTES:
        return text
    return encoded[:MAX_RESULT_BYTES].decode("utf-8", errors="ignore") + " … (cut)"
