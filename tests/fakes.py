"""Loopback HTTP servers that speak OpenRouter's and Twilio's wire formats."""
from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import requests

from tests.support import ACCOUNT_SID, AUTH_TOKEN, sign


@dataclass
class Scripted:
    """One canned answer: status, JSON body (or raw text), headers, and a delay before answering."""

    status: int = 200
    body: object = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    # Seconds between the body's bytes after the headers: a provider that trickles its answer.
    drip: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: object
    # When the request arrived (time.monotonic()): how fast requests came, e.g. a campaign's pace.
    at: float = field(default_factory=time.monotonic)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many workers connect at once in the concurrency tests and benches; the default backlog of 5
    # would drop their connection attempts and make the fake look slow.
    request_queue_size = 512


class _Loopback:
    """A threaded HTTP server on 127.0.0.1:0 for a handler class; started and stopped by the tests.

    One server may serve many tests in turn: `reset()` forgets what the last one did and starts a new
    epoch. The URL handed out names the epoch, so a request for an earlier epoch's URL (a thread an
    earlier test left running) is answered 410 and recorded nowhere, and its waits are cut short.
    """

    def _serve(self, handler) -> None:
        self.server = _Server(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def _new_epoch(self) -> None:
        """Refuse the requests of earlier epochs and wake the ones still waiting in a delay."""
        previous = getattr(self, "released", None)
        if previous is not None:
            previous.set()
        self.epoch = getattr(self, "epoch", 0) + 1
        self.released = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/epoch{self.epoch}"

    def current_path(self, path: str) -> str | None:
        """The request's path without this epoch's prefix; None when it names another epoch."""
        prefix = f"/epoch{self.epoch}"
        rest = path[len(prefix):]
        return (rest or "/") if path.startswith(prefix) and rest[:1] in ("", "/", "?") else None

    @staticmethod
    def refuse_stale(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(410)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


class FakeServer(_Loopback):
    """A threaded HTTP server on 127.0.0.1:0 that records requests and plays scripted answers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                with fake.lock:
                    epoch, released = fake.epoch, fake.released
                    path = fake.current_path(self.path)
                    if path is not None:
                        fake.in_flight += 1
                        fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                if path is None:
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    fake.refuse_stale(self)
                    return
                try:
                    self._answer(path, released)
                finally:
                    with fake.lock:
                        if fake.epoch == epoch:
                            fake.in_flight -= 1

            def _answer(self, path: str, released: threading.Event):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                recorded = Recorded(self.command, path, dict(self.headers), fake.decode(self.headers, raw))
                with fake.lock:
                    if fake.released is not released:
                        return  # reset while the body was read: an earlier test's request
                    fake.requests.append(recorded)
                    scripted = fake.script.popleft() if fake.script and fake.scripts_answer(recorded) else None
                answer = scripted or fake.default_answer(recorded)
                if answer.delay:
                    released.wait(answer.delay)
                payload = answer.body if isinstance(answer.body, (str, bytes)) else json.dumps(answer.body)
                payload = payload.encode() if isinstance(payload, str) else payload
                try:
                    self.send_response(answer.status)
                    content_type = "application/json" if not isinstance(answer.body, (str, bytes)) else "text/plain"
                    self.send_header("Content-Type", content_type)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if answer.drip:
                        for byte in payload:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            released.wait(answer.drip)
                    else:
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _handle

        self._serve(Handler)

    def reset(self) -> None:
        """Forget every request, scripted answer and setting of the last test (see _Loopback)."""
        with self.lock:
            self._new_epoch()
            self.requests: list[Recorded] = []
            self.script: deque[Scripted] = deque()
            self.in_flight = 0
            self.max_in_flight = 0

    def then(self, *answers: Scripted) -> None:
        """Queue answers for the next requests, in order; afterwards the default answer applies."""
        with self.lock:
            self.script.extend(answers)

    @staticmethod
    def decode(headers, raw: bytes):
        content_type = headers.get("Content-Type", "")
        if "json" in content_type:
            return json.loads(raw or b"null")
        if "form" in content_type:
            return {key: values[-1] for key, values in parse_qs(raw.decode(), keep_blank_values=True).items()}
        return raw.decode(errors="replace")

    def default_answer(self, request: Recorded) -> Scripted:
        return Scripted(404, {"error": "not found"})

    def scripts_answer(self, request: Recorded) -> bool:
        """Whether the next scripted answer goes to this request (else it gets the default one)."""
        return True


EMBEDDING_SIZE = 256


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def hashed_words(text: str) -> list[float]:
    """A deterministic stand-in for a model's embedding: a hashed bag of words, unit length, so texts
    sharing words are similar and texts sharing none are orthogonal."""
    vector = [0.0] * EMBEDDING_SIZE
    for word in words(text):
        vector[zlib.crc32(word.encode()) % EMBEDDING_SIZE] += 1.0
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


class FakeOpenRouter(FakeServer):
    """Answers chat completions as OpenRouter does; by default the reply names the last question."""

    def reset(self) -> None:
        super().reset()
        self.reply_for = lambda messages: f"Answer to: {messages[-1]['content']}"
        self.delay_for = lambda messages: 0.0
        # The `usage.cost` (USD) of each default completion; None leaves it out, as some providers do.
        self.cost: float | None = 0.00001
        # Models that fail (503) as OpenRouter's upstreams do when down; a request's `models` list
        # then routes to its next model, which the answer names in `model`.
        self.failing_models: set[str] = set()
        # What GET /models says each model takes as input (architecture.input_modalities).
        self.input_modalities: dict[str, list[str]] = {
            "openai/gpt-4o-mini": ["text", "image", "file"],
            "anthropic/claude-3.5-sonnet": ["text", "image", "file"],
        }
        # What GET /models says a token of each model costs in USD (`pricing`, as strings): none by
        # default, so only the tests about prices meet a price list.
        self.pricing: dict[str, dict[str, str]] = {}
        # What POST /audio/transcriptions hears and costs; `transcription_error` answers instead when set.
        self.transcript = "What is the weather like in Lisbon?"
        self.transcription_cost: float | None = 0.0002
        self.transcription_error: Scripted | None = None
        # Models GET /models says take tools (`supported_parameters`): none by default, so only the
        # tests about tools meet a request that offers them.
        self.tool_models: set[str] = set()
        # What GET /models answers instead of the catalogue, when set. Scripted answers (then(...))
        # never go to it: the catalogue is asked before a completion whenever it is stale.
        self.models_error: Scripted | None = None
        # What POST /embeddings costs per input token (USD); None leaves the cost out.
        self.embedding_token_cost: float | None = 0.00000002
        self.embedding_error: Scripted | None = None

    def scripts_answer(self, request: Recorded) -> bool:
        return not (request.method == "GET" and request.path.endswith("/models"))

    @property
    def transcriptions(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/audio/transcriptions")]

    @property
    def embedding_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/embeddings")]

    @property
    def completions(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @staticmethod
    def completion(text: str, model: str = "openai/gpt-4o-mini") -> dict:
        return {
            "id": "gen-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "cost": 0.00001},
        }

    @staticmethod
    def error(status: int, message: str, **headers) -> Scripted:
        return Scripted(status, {"error": {"code": status, "message": message, "metadata": {}}}, headers)

    def default_answer(self, request: Recorded) -> Scripted:
        if request.path.endswith("/chat/completions"):
            messages = request.body["messages"]
            model = self.answering_model(request.body)
            if model is None:
                return self.error(503, "every model of the request is down")
            completion = self.completion(self.reply_for(messages), model)
            if self.cost is None:
                del completion["usage"]["cost"]
            else:
                completion["usage"]["cost"] = self.cost
            return Scripted(200, completion, delay=self.delay_for(messages))
        if request.path.endswith("/key"):
            return Scripted(200, {"data": {"label": "sk-or-v1-abc...", "usage": 0.5, "limit": None}})
        if request.path.endswith("/models"):
            if self.models_error is not None:
                return self.models_error
            listed = [{"id": slug, "architecture": {"input_modalities": modalities},
                       "supported_parameters": ["max_tokens", "temperature",
                                                *(["tools", "tool_choice"] if slug in self.tool_models else [])]}
                      for slug, modalities in self.input_modalities.items()]
            for model in listed:
                if model["id"] in self.pricing:
                    model["pricing"] = self.pricing[model["id"]]
            return Scripted(200, {"data": listed})
        if request.path.endswith("/embeddings"):
            if self.embedding_error is not None:
                return self.embedding_error
            texts = request.body["input"]
            tokens = sum(len(words(text)) for text in texts)
            usage = {"prompt_tokens": tokens, "total_tokens": tokens}
            if self.embedding_token_cost is not None:
                usage["cost"] = tokens * self.embedding_token_cost
            return Scripted(200, {"object": "list", "model": request.body["model"], "usage": usage,
                                  "data": [{"object": "embedding", "index": index, "embedding": hashed_words(text)}
                                           for index, text in enumerate(texts)]})
        if request.path.endswith("/audio/transcriptions"):
            if self.transcription_error is not None:
                return self.transcription_error
            usage = {"seconds": 3} if self.transcription_cost is None else {"seconds": 3,
                                                                            "cost": self.transcription_cost}
            return Scripted(200, {"text": self.transcript, "usage": usage})
        return super().default_answer(request)


    def answering_model(self, body: dict) -> str | None:
        """The first model of the request that is not failing: `model`, then `models` in order."""
        candidates = [body["model"], *body.get("models", [])]
        return next((model for model in candidates if model not in self.failing_models), None)


# Twilio's messaging host (messaging.twilio.com), served by the same fake as the API host.
TYPING_PATH = "/v2/Indicators/Typing.json"
# The approved template's own words, as Twilio renders a template message's body with its variable.
# A quick-reply template's own words (its buttons are not part of the body).
QUICK_REPLY_TEXT = "How did we do today?"
TEMPLATE_TEXT = "Sorry for the wait — here is the answer to your earlier message: {{1}}"


class FakeTwilio(FakeServer):
    """Accepts Messages.json posts and lists what it accepted, as Twilio's REST API does."""

    def __init__(self):
        # Twilio's media storage: another host, where a media URL redirects.
        self.storage = FakeMediaStorage()
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.storage.reset()
        self.accepted: list[dict] = []
        # Seconds to wait after taking a message before answering: a worker can die in between.
        self.hold_answers = 0.0
        # Answers for the next GETs of the message list, before the real listing applies.
        self.lookup_answers: deque[Scripted] = deque()
        # Delivery reports posted, signed, to a message's StatusCallback after it is taken, in order:
        # "sent", or ("undelivered", 63016) for a failure with its ErrorCode. None by default.
        self.statuses: list[str | tuple[str, int]] = []
        self.callback_delay = 0.05  # seconds after taking the message, and between reports
        self.auth_token = AUTH_TOKEN
        # Each report posted: {"url", "form", "status" (the answer's HTTP status, None when unreachable)}.
        self.callbacks: list[dict] = []
        # Answers for the next typing indicators, before the default `{"success": true}` applies.
        self.typing_answers: deque[Scripted] = deque()
        # Recipients whose 24-hour window Twilio considers closed: a free-form message to one of them
        # is refused with 63016, a template message is taken.
        self.closed_windows: set[str] = set()
        # Approved templates by ContentSid: the text a message of one reports as its body, {{n}} filled
        # from its ContentVariables. A template not here reads TEMPLATE_TEXT (or QUICK_REPLY_TEXT).
        self.templates: dict[str, str] = {}
        # Recipients Twilio refuses, each with its error code (21211 not a valid number, 21610
        # unsubscribed, 63016 ...): a message to one is answered 400 with that code and not taken.
        self.refused_recipients: dict[str, int] = {}

    def start(self) -> FakeTwilio:
        self.storage.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self.storage.stop()

    def add_media(self, content: bytes, content_type: str, served_type: str | None = None,
                  declared_length: int | None = None) -> str:
        """Keep a file in the fake's media storage; return its MediaUrl (which redirects there). The
        storage serves it as `served_type` when given ("" sends no Content-Type at all)."""
        media_sid = "ME" + uuid.uuid4().hex
        self.storage.files[media_sid] = (content, content_type if served_type is None else served_type,
                                         declared_length)
        return f"{self.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MM{uuid.uuid4().hex}/Media/{media_sid}"

    @property
    def media_fetches(self) -> list[Recorded]:
        return [r for r in self.requests if "/Media/" in r.path]

    @property
    def sent(self) -> list[dict]:
        """The form of every accepted or attempted outbound message, in arrival order."""
        return [r.body for r in self.requests if r.method == "POST" and r.path.endswith("/Messages.json")]

    def scripts_answer(self, request: Recorded) -> bool:
        """Scripted answers (then(...)) go to every request but the message-list lookups, which get
        theirs from `lookup_answers`, and the typing indicators, from `typing_answers`: a test
        scripting failed sends means the sends."""
        path = urlparse(request.path).path
        return not ((request.method == "GET" and path.endswith("/Messages.json")) or path == TYPING_PATH)

    @property
    def lookups(self) -> list[dict]:
        """The query of every GET of the message list."""
        return [parse_qs(urlparse(r.path).query) for r in self.requests
                if r.method == "GET" and urlparse(r.path).path.endswith("/Messages.json")]

    def _report_delivery(self, url: str, message: dict, statuses: list) -> None:
        """Post Twilio's status callbacks for `message` to `url`, signed as Twilio signs them."""
        released = self.released
        if released.wait(self.hold_answers):
            return  # the test that asked for these reports is over
        for status in statuses:
            if released.wait(self.callback_delay):
                return
            status, code = (status, None) if isinstance(status, str) else status
            form = {"MessageSid": message["sid"], "SmsSid": message["sid"], "MessageStatus": status,
                    "SmsStatus": status, "AccountSid": message["account_sid"], "From": message["from"],
                    "To": message["to"], "ApiVersion": "2010-04-01", "ChannelPrefix": "whatsapp"}
            if code is not None:
                form["ErrorCode"] = str(code)
            try:
                answer = requests.post(url, data=form, headers={"X-Twilio-Signature": sign(url, form, self.auth_token)},
                                       timeout=5).status_code
            except requests.RequestException:
                answer = None
            with self.lock:
                if self.released is released:
                    self.callbacks.append({"url": url, "form": form, "status": answer})

    @staticmethod
    def error(status: int, code: int, message: str) -> Scripted:
        return Scripted(status, {"code": code, "message": message,
                                 "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status})

    def default_answer(self, request: Recorded) -> Scripted:
        url = urlparse(request.path)
        parts = url.path.split("/")
        if request.method == "POST" and url.path == TYPING_PATH:
            return self._typing_answer()
        if request.method == "POST" and url.path.endswith("/Messages.json"):
            account = parts[3]
            sid = "SM" + uuid.uuid4().hex
            form = request.body
            if form.get("To") in self.closed_windows and not form.get("ContentSid"):
                return self.error(400, 63016, "Failed to send freeform message because you are outside the "
                                              "allowed window. If you want to send messages outside the window, "
                                              "please use a Template.")
            if form.get("To") in self.refused_recipients:
                code = self.refused_recipients[form["To"]]
                return self.error(400, code, f"Twilio refused the recipient {form['To']} (error {code})")
            message = {
                "sid": sid, "account_sid": account, "to": form.get("To"), "from": form.get("From"),
                "body": self.rendered_body(form), "status": "queued", "num_segments": "1",
                "direction": "outbound-api", "api_version": "2010-04-01", "date_created": formatdate(usegmt=True),
                "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
                "content_sid": form.get("ContentSid"), "content_variables": form.get("ContentVariables"),
            }
            with self.lock:
                self.accepted.append(message)
            if form.get("StatusCallback") and self.statuses:
                threading.Thread(target=self._report_delivery, args=(form["StatusCallback"], message,
                                                                    list(self.statuses)), daemon=True).start()
            return Scripted(201, message, delay=self.hold_answers)
        if request.method == "GET" and url.path.endswith("/Messages.json"):
            with self.lock:
                if self.lookup_answers:
                    return self.lookup_answers.popleft()
            query = {name: values[-1] for name, values in parse_qs(url.query).items()}
            with self.lock:
                matching = [m for m in reversed(self.accepted)
                            if m["to"] == query.get("To", m["to"]) and m["from"] == query.get("From", m["from"])]
            size = int(query.get("PageSize", 50))
            return Scripted(200, {"messages": matching[:size], "page": 0, "page_size": size, "start": 0,
                                  "end": max(len(matching[:size]) - 1, 0), "uri": url.path,
                                  "first_page_uri": url.path, "next_page_uri": None, "previous_page_uri": None})
        if request.method == "GET" and "/Media/ME" in url.path:
            if request.headers.get("Authorization") != basic_auth(ACCOUNT_SID, self.auth_token):
                return self.error(401, 20003, "Authenticate")
            return Scripted(307, "", {"Location": f"{self.storage.url}/media-storage/{parts[-1]}"})
        if request.method == "GET" and len(parts) == 4 and parts[3].endswith(".json"):
            account = parts[3][:-5]
            return Scripted(200, {"sid": account, "friendly_name": "Test account", "status": "active",
                                  "type": "Full", "uri": f"/2010-04-01/Accounts/{account}.json"})
        return super().default_answer(request)

    def rendered_body(self, form: dict) -> str | None:
        """The body Twilio reports for a message: its Body, or a template's text with its variables in."""
        if not form.get("ContentSid"):
            return form.get("Body")
        approved = self.templates.get(form["ContentSid"])
        if approved is None and not form.get("ContentVariables"):
            return QUICK_REPLY_TEXT  # a template with buttons and no variable, as approved
        text = TEMPLATE_TEXT if approved is None else approved
        for name, value in json.loads(form.get("ContentVariables") or "{}").items():
            text = text.replace("{{" + name + "}}", value)
        return text

    @property
    def content_sends(self) -> list[Recorded]:
        """Every accepted or attempted template message (one with a ContentSid), in arrival order."""
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/Messages.json")
                and r.body.get("ContentSid")]

    @property
    def typing_indicators(self) -> list[dict]:
        """The form of every typing indicator posted (channel, messageId), in arrival order."""
        return [r.body for r in self.requests if r.method == "POST" and urlparse(r.path).path == TYPING_PATH]

    def _typing_answer(self) -> Scripted:
        with self.lock:
            if self.typing_answers:
                return self.typing_answers.popleft()
        return Scripted(200, {"success": True})


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class FakeMediaStorage(_Loopback):
    """Twilio's media storage: serves a file without auth, refuses any request that carries some, and
    streams a file's declared length (past its bytes) so a test can see a client stop reading."""

    CHUNK = 64 * 1024

    def __init__(self):
        self.reset()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = fake.current_path(self.path)
                if path is None:
                    fake.refuse_stale(self)
                    return
                media_sid = path.rsplit("/", 1)[-1]
                released = fake.released
                fake.requests.append({"path": path, "headers": dict(self.headers)})
                if self.headers.get("Authorization") or media_sid not in fake.files:
                    self.send_response(403 if self.headers.get("Authorization") else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                content, content_type, declared = fake.files[media_sid]
                length = declared if declared is not None else len(content)
                self.send_response(200)
                if content_type:
                    self.send_header("Content-Type", content_type)
                if media_sid in fake.unannounced:
                    # No Content-Length: the body ends when the connection closes.
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                sent = 0
                drip = fake.drips.get(media_sid)
                size = 1 if drip else fake.CHUNK
                try:
                    while sent < length and not (drip and released.is_set()):
                        chunk = content[sent:sent + size] or b"\0" * min(size, length - sent)
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        if drip:
                            released.wait(drip)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                fake.bytes_sent[media_sid] = sent

        self._serve(Handler)

    def reset(self) -> None:
        """Forget the files and fetches of the last test (see _Loopback)."""
        self._new_epoch()
        # media sid → (bytes, Content-Type, Content-Length to declare and stream up to, or None).
        self.files: dict[str, tuple[bytes, str, int | None]] = {}
        self.requests: list[dict] = []
        # media sid → bytes written before the client went away or the file ended.
        self.bytes_sent: dict[str, int] = {}
        # Media sids served without a Content-Length, so only the bytes themselves tell the size.
        self.unannounced: set[str] = set()
        # Media sid → seconds between bytes: a host that drips its file a byte at a time.
        self.drips: dict[str, float] = {}
