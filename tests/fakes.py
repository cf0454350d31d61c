"""Small fakes of Gmail, Slack and GitHub (no runnable servers exist), served over real HTTPS on 127.0.0.1.

Each implements only the operations the tests use, with the vendors' documented shapes: Slack answers 200 with
`ok: false` on failure; Gmail and GitHub use HTTP status codes and JSON error bodies.
"""

from __future__ import annotations

import itertools
import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fake_github import GitHubFake
from tests.fake_gmail import GmailFake


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    host: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeState:
    """What the fakes hold: Slack's messages, channels and reactions, the Gmail and GitHub fakes, every request seen."""

    seen: list[Seen] = field(default_factory=list)
    slack_messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    slack_channels: dict[str, dict[str, Any]] = field(default_factory=dict)   # id -> {name, is_archived, ...}
    slack_pins: set[tuple[str, str]] = field(default_factory=set)             # (channel, ts)
    slack_reactions: set[tuple[str, str, str]] = field(default_factory=set)  # (channel, ts, name)
    slack_calls: list[str] = field(default_factory=list)                     # Slack methods called, in order
    slack_files: dict[str, dict[str, Any]] = field(default_factory=dict)     # id -> {id, name, content}
    gmail: GmailFake = field(default_factory=GmailFake)
    github: GitHubFake = field(default_factory=GitHubFake)
    echo_headers: dict[str, str] = field(default_factory=dict)
    hold: set[str] = field(default_factory=set)   # paths whose answer waits (after taking effect) until `unhold`
    unhold: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))


def _slack(state: FakeState, method: str, path: str, query: dict[str, str], body: dict[str, Any]
           ) -> tuple[int, dict[str, Any]]:
    state.slack_calls.append(path.removeprefix("/api/"))
    body = {**query, **body}     # a method's arguments may come in the query string as well as in the body
    if path == "/api/conversations.info":
        channel = state.slack_channels.get(str(body.get("channel")))
        if channel is None:
            return 200, {"ok": False, "error": "channel_not_found"}
        return 200, {"ok": True, "channel": _channel(channel)}
    if path in ("/api/conversations.rename", "/api/conversations.setTopic", "/api/conversations.setPurpose"):
        channel = state.slack_channels.get(str(body.get("channel")))
        if channel is None:
            return 200, {"ok": False, "error": "channel_not_found"}
        if path.endswith("rename"):
            if any(c["name"] == body.get("name") for c in state.slack_channels.values() if c is not channel):
                return 200, {"ok": False, "error": "name_taken"}
            channel["name"] = str(body.get("name"))
        else:
            what = "topic" if path.endswith("Topic") else "purpose"
            channel[what] = str(body.get(what, ""))
        return 200, {"ok": True, "channel": _channel(channel)}
    if path in ("/api/pins.add", "/api/pins.remove"):
        key = (str(body.get("channel")), str(body.get("timestamp")))
        if path.endswith(".add"):
            if key in state.slack_pins:
                return 200, {"ok": False, "error": "already_pinned"}
            state.slack_pins.add(key)
        elif key in state.slack_pins:
            state.slack_pins.discard(key)
        else:
            return 200, {"ok": False, "error": "no_pin"}
        return 200, {"ok": True}
    if path == "/api/conversations.create":
        name = str(body.get("name", ""))
        if any(c["name"] == name for c in state.slack_channels.values()):
            return 200, {"ok": False, "error": "name_taken"}
        cid = f"C{next(state.counter):08d}"
        state.slack_channels[cid] = {"id": cid, "name": name, "is_archived": False}
        return 200, {"ok": True, "channel": dict(state.slack_channels[cid])}
    if path in ("/api/conversations.archive", "/api/conversations.unarchive"):
        channel = state.slack_channels.get(str(body.get("channel")))
        archive = path.endswith(".archive")
        if channel is None:
            return 200, {"ok": False, "error": "channel_not_found"}
        if channel["is_archived"] == archive:
            return 200, {"ok": False, "error": "already_archived" if archive else "not_archived"}
        channel["is_archived"] = archive
        return 200, {"ok": True}
    if path in ("/api/reactions.add", "/api/reactions.remove"):
        key = (str(body.get("channel")), str(body.get("timestamp")), str(body.get("name")))
        if path.endswith(".add"):
            if key in state.slack_reactions:
                return 200, {"ok": False, "error": "already_reacted"}
            state.slack_reactions.add(key)
        elif key in state.slack_reactions:
            state.slack_reactions.discard(key)
        else:
            return 200, {"ok": False, "error": "no_reaction"}
        return 200, {"ok": True}
    if path == "/api/chat.postMessage":
        if not body.get("channel") or not body.get("text"):
            return 200, {"ok": False, "error": "no_text" if body.get("channel") else "channel_not_found"}
        channel = state.slack_channels.get(str(body["channel"]))
        if channel is not None and channel["is_archived"]:
            return 200, {"ok": False, "error": "is_archived"}
        ts = f"1700000000.{next(state.counter):06d}"
        state.slack_messages[ts] = {"channel": body["channel"], "text": body["text"], "ts": ts}
        # As Slack answers a bot token (the agents' usual one): the message names the app's bot.
        return 200, {"ok": True, "channel": body["channel"], "ts": ts,
                     "message": {"text": body["text"], "ts": ts, "bot_id": "B0GOEXFAKE"}}
    if path == "/api/chat.update":
        message = state.slack_messages.get(str(body.get("ts")))
        if message is None or message["channel"] != body.get("channel"):
            return 200, {"ok": False, "error": "message_not_found"}
        message["text"] = body.get("text", "")
        return 200, {"ok": True, "channel": body["channel"], "ts": body["ts"], "text": message["text"]}
    if path == "/api/conversations.history":   # with latest=TS&inclusive=true&limit=1: that one message
        found = [m for m in state.slack_messages.values() if m["channel"] == query.get("channel")
                 and (query.get("latest") is None or m["ts"] == query.get("latest"))]
        return 200, {"ok": True, "messages": [{"type": "message", "text": m["text"], "ts": m["ts"]} for m in found]}
    if path == "/api/files.upload":
        fid = f"F{next(state.counter):08d}"
        state.slack_files[fid] = {"id": fid, "name": body.get("filename", "file"), "content": body.get("content", "")}
        return 200, {"ok": True, "file": {"id": fid, "name": state.slack_files[fid]["name"]}}
    if path == "/api/files.delete":
        if state.slack_files.pop(str(body.get("file")), None) is None:
            return 200, {"ok": False, "error": "file_not_found"}
        return 200, {"ok": True}
    if path == "/api/chat.delete":
        if state.slack_messages.pop(str(body.get("ts")), None) is None:
            return 200, {"ok": False, "error": "message_not_found"}
        return 200, {"ok": True, "channel": body.get("channel"), "ts": body.get("ts")}
    if path == "/api/conversations.list":
        return 200, {"ok": True, "channels": [{"id": "C0BOTS", "name": "bots"}, {"id": "C0RANDOM", "name": "random"}]}
    return 200, {"ok": False, "error": "unknown_method"}


def _channel(channel: dict[str, Any]) -> dict[str, Any]:
    """A conversation object as Slack shows it: the topic and purpose as {value, creator, last_set}."""
    shown = {k: v for k, v in channel.items() if k not in ("topic", "purpose")}
    for what in ("topic", "purpose"):
        shown[what] = {"value": channel.get(what, ""), "creator": "", "last_set": 0}
    return {**shown, "is_channel": True, "is_private": bool(channel.get("is_private", False))}


def _gmail(state: FakeState, method: str, path: str, query: dict[str, str], body: dict[str, Any]
           ) -> tuple[Any, ...]:
    return state.gmail.handle(method, path, query, body)


def _github(state: FakeState, method: str, path: str, query: dict[str, str], body: dict[str, Any]
            ) -> tuple[Any, ...]:
    return state.github.handle(method, path, query, body)


APIS = {"slack.com": _slack, "gmail.googleapis.com": _gmail, "api.github.com": _github}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        """The request body, framed by Content-Length or chunked as a real server reads it (leaving chunks unread
        would have them parsed as the next request on the connection)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return out
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        raw = self._body()
        host = (self.headers.get("Host") or "").split(":")[0]
        url = urlsplit(self.path)
        state = self.server.state
        with state.lock:
            state.seen.append(Seen(self.command, host, self.path, dict(self.headers.items()), raw))
            if "application/x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
                body: Any = dict(parse_qsl(raw.decode()))
            else:
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
            api = APIS.get(host)
            extra: dict[str, str] = {}
            if url.path == "/slow":
                status, payload = 200, {"slow": True}
            elif url.path == "/echo":  # a careless API that echoes what it was sent (headers included)
                status, payload = 200, {"path": self.path, "headers": dict(self.headers.items())}
            elif url.path == "/redirect":
                status, payload = 302, {"redirect": True}
            elif api is None:
                status, payload = 200, {"host": host, "path": self.path, "method": self.command}
            else:
                status, payload, *more = api(state, self.command, url.path, dict(parse_qsl(url.query)),
                                             body if isinstance(body, dict) else {})
                extra = more[0] if more else {}   # an API's own response headers (Location, ETag)
        if url.path == "/slow":
            self.server.release.wait(30)
        if url.path in state.hold:
            state.unhold.wait(30)
        if url.path == "/malformed":  # a broken upstream: a header line without a colon, quoting what it was sent
            self.wfile.write(b"HTTP/1.1 200 OK\r\nEcho " + (self.headers.get("Authorization") or "").encode()
                             + b"\r\n\r\n")
            self.close_connection = True
            return
        if url.path == "/upgrade-foo":  # switch to a protocol the proxy cannot inspect, then echo bytes
            self.send_response(101)
            self.send_header("Upgrade", "foo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while chunk := self.connection.recv(1024):
                state.seen.append(Seen("RAW", host, url.path, {}, chunk))
                self.connection.sendall(chunk)
            self.close_connection = True
            return
        data = b"" if status == 204 else json.dumps(payload).encode()   # 204 No Content has no body
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in {**extra, **state.echo_headers}.items():
            self.send_header(k, v)
        if url.path == "/redirect":
            self.send_header("Location", dict(parse_qsl(url.query)).get("to", "/"))
        if url.path == "/echo":
            self.send_header("X-Echo-Authorization", self.headers.get("Authorization", ""))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FakeState
    release: threading.Event


class FakeUpstream:
    """A real HTTPS server on 127.0.0.1 serving every fake API, told apart by the Host header."""

    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        self.state = FakeState()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.state = self.state
        self.server.release = threading.Event()
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if ssl_context else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def seen_paths(self, host: str | None = None) -> list[str]:
        with self.state.lock:
            return [s.path for s in self.state.seen if host is None or s.host == host]

    def close(self) -> None:
        self.server.release.set()
        self.server.shutdown()
        self.server.server_close()
