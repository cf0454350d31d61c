"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 over plain HTTP that records every request."""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# The `type` and `code` OpenAI puts in its error body for each status, and the message it gives when none is scripted.
_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country, region, or territory not supported."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


@dataclass(frozen=True)
class Error:
    """Answer with HTTP `status` and OpenAI's error JSON; unset fields take what OpenAI sends for that status."""

    status: int = 500
    message: str | None = None
    type: str | None = None
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)   # e.g. {"retry-after": "0"}

    def body(self) -> dict[str, Any]:
        kind, code, message = _ERROR_DEFAULTS.get(self.status, ("server_error" if self.status >= 500 else
                                                                 "invalid_request_error", None, "Error."))
        return {"error": {"message": self.message if self.message is not None else message,
                          "type": self.type or kind, "param": self.param,
                          "code": self.code if self.code is not None else code}}


@dataclass(frozen=True)
class Delay:
    """Wait `seconds` (cut short if the fake closes), then answer with `then` as if it were the scripted reply."""

    seconds: float
    then: Reply = ""


@dataclass(frozen=True)
class Hangup:
    """Close the connection without answering."""


Reply = str | Error | Delay | Hangup


@dataclass
class Recorded:
    """One request as the fake received it; `body` is the parsed JSON, or None if there was none or it did not parse."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    query: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """The value of header `name`, matched without regard to case."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


class FakeOpenAI:
    """The scripted server; binds a free port at once, serves after `start()` (or on entering a `with` block).

    Tests queue the assistant's replies in order (`fake.script("print(1)", Error(429), Delay(2, "late"), Hangup())`);
    each `POST /v1/chat/completions` takes the next one. A plain string is the assistant's content, answered in the
    documented `chat.completion` shape, or as `chat.completion.chunk` server-sent events ending `data: [DONE]` when the
    request asks for `stream: true`. `Error` answers an HTTP error status with OpenAI's error body, `Delay` waits before
    answering (to trip client timeouts), `Hangup` closes the connection without a word. An empty queue answers 500 saying
    the script ran out, so a test with too few replies fails loudly. `GET /v1/models` lists the known models; other
    paths answer 404 as OpenAI does. With `api_key` set, a request without `Authorization: Bearer <api_key>` gets 401.
    """

    def __init__(self, replies: list[Reply] | None = None, *, api_key: str | None = None,
                 models: list[str] | None = None) -> None:
        self.api_key = api_key
        self.models = list(models or ["fake-model"])
        self.replies: list[Reply] = list(replies or [])
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self._serial = itertools.count(1)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What the SDK takes as `base_url`."""
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> FakeOpenAI:
        """Queue `replies` after those already queued."""
        with self.lock:
            self.replies.extend(replies)
        return self

    def prompts(self) -> list[str]:
        """The text of every message of every chat-completion request received, in order (parts of a list flattened)."""
        with self.lock:
            bodies = [r.body for r in self.requests if r.path == "/v1/chat/completions" and isinstance(r.body, dict)]
        texts: list[str] = []
        for body in bodies:
            for message in body.get("messages") or []:
                if isinstance(message, dict):
                    texts += _texts(message.get("content"))
        return texts

    def chat_requests(self) -> list[Recorded]:
        """The chat-completion requests received, in order."""
        with self.lock:
            return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def start(self) -> FakeOpenAI:
        """Serve in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="fake-openai", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, wake any `Delay` still waiting (its connection is then closed unanswered), free the port."""
        if self._closed:
            return
        self._closed = True
        self.closing.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _next_reply(self) -> Reply | None:
        with self.lock:
            return self.replies.pop(0) if self.replies else None

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._serial):04d}{secrets.token_hex(8)}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeOpenAI


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):   # the client gave up first (e.g. its timeout)
            self.close_connection = True

    def _answer(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with fake.lock:
            fake.requests.append(Recorded(self.command, url.path, dict(self.headers.items()), body, raw,
                                          dict(parse_qsl(url.query))))
        route = (self.command, url.path)
        known = route == ("POST", "/v1/chat/completions") or (self.command == "GET" and (
            url.path == "/v1/models" or url.path.startswith("/v1/models/")))
        if not known:
            return self._error(Error(404, f"Invalid URL ({self.command} {url.path})"))
        if fake.api_key is not None:
            auth = self.headers.get("Authorization") or ""
            if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
                return self._error(Error(401, "You didn't provide an API key. You need to provide your API key in an "
                                              "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                                              "YOUR_KEY)."))
            if auth.removeprefix("Bearer ").strip() != fake.api_key:
                return self._error(Error(401, "Incorrect API key provided. You can find your API key at "
                                              "https://platform.openai.com/account/api-keys."))
        if url.path == "/v1/models":
            return self._json(200, {"object": "list", "data": [_model(m) for m in fake.models]})
        if url.path.startswith("/v1/models/"):
            name = url.path.removeprefix("/v1/models/")
            if name not in fake.models:
                return self._error(Error(404, f"The model `{name}` does not exist or you do not have access to it.",
                                         code="model_not_found"))
            return self._json(200, _model(name))
        return self._chat(body, raw)

    def _chat(self, body: Any, raw: bytes) -> None:
        fake = self.server.fake
        if raw and body is None:
            return self._error(Error(400, "We could not parse the JSON body of your request. (HINT: This likely means "
                                          "you aren't using your HTTP library correctly.)"))
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            return self._error(Error(400, "you must provide a model parameter", param="model"))
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return self._error(Error(400, "Missing required parameter: 'messages'.", param="messages",
                                     code="missing_required_parameter"))
        reply = fake._next_reply()
        if reply is None:
            return self._error(Error(500, "fake OpenAI: the script ran out of replies; this chat completion "
                                          f"(request {len(fake.chat_requests())}) has none, queue more with "
                                          "fake.script(...)", code="script_exhausted"))
        while isinstance(reply, Delay):
            if fake.closing.wait(reply.seconds):
                self.close_connection = True
                return None
            reply = reply.then
        if isinstance(reply, Hangup):
            self.close_connection = True
            return None
        if isinstance(reply, Error):
            return self._error(reply)
        model = body["model"]
        prompt_tokens = 3 + sum(4 + sum(map(_count, _texts(m.get("content"))))
                                for m in body["messages"] if isinstance(m, dict))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _count(reply),
                 "total_tokens": prompt_tokens + _count(reply),
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        ident, created = fake._new_id("chatcmpl-"), int(time.time())
        if body.get("stream") is True:
            options = body.get("stream_options")
            with_usage = isinstance(options, dict) and options.get("include_usage") is True
            return self._stream(ident, created, model, reply, usage if with_usage else None)
        return self._json(200, {
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply, "refusal": None,
                                                 "annotations": []},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake",
        })

    def _stream(self, ident: str, created: int, model: str, reply: str, usage: dict[str, Any] | None) -> None:
        """Server-sent events as OpenAI sends them, in HTTP/1.1 chunks so the connection stays usable."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", self.server.fake._new_id("req_"))
        self.end_headers()
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": "fp_fake"}
        extra = {"usage": None} if usage is not None else {}

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

        events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        events += [chunk({"content": piece}, None) for piece in _pieces(reply)]
        events.append(chunk({}, "stop"))
        if usage is not None:
            events.append({**base, "choices": [], "usage": usage})
        for event in events:
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _error(self, error: Error) -> None:
        self._json(error.status, error.body(), error.headers)

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", self.server.fake._new_id("req_"))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake-openai"}


def _texts(content: Any) -> list[str]:
    """The text in a message's `content`: a string, or a list of parts of which the text ones count."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [str(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def _count(text: str) -> int:
    """A rough token count: about four characters a token, as OpenAI's own rule of thumb has it."""
    return max(1, (len(text) + 3) // 4) if text else 0


def _pieces(text: str, size: int = 16) -> list[str]:
    """`text` cut into the small deltas a stream carries."""
    return [text[i:i + size] for i in range(0, len(text), size)]
