"""The one-time links of notifications: a page that shows a waiting request and a button that decides it, once."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import re
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..approvalconfig import netloc
from ..audit import store as audit
from ..config import Config
from ..errors import GoexError, StateError
from . import store
from .served import OPTIONS, EmbeddedServer, listening_socket, stop

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,128}")
#: What each action is called on its page: the question, the button, and what happened once it is done.
_WORDS = {
    ("hold", "approve"): ("Approve this request?", "Approve", "Approved: the request is being sent."),
    ("hold", "deny"): ("Deny this request?", "Deny", "Denied: the request was not sent; the agent is told so."),
    ("delay", "cancel"): ("Cancel this delayed request?", "Cancel it", "Cancelled: the request will not be sent."),
    ("delay", "approve"): ("Send this delayed request now?", "Send now", "Approved: the request is being sent now."),
}
_SECURITY_HEADERS = [
    (b"referrer-policy", b"no-referrer"),              # the token is in the URL
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-robots-tag", b"noindex, nofollow"),
]


@dataclass(frozen=True)
class Answer:
    """What a link leads to: an HTTP status, a title and a sentence, and (for a page to decide on) the request."""

    status: int
    title: str
    message: str
    entry: dict[str, Any] | None = None
    action: str | None = None


def by_of(config: Config) -> str:
    """Who decided, as the approvals row keeps it: a link, and the channels links are sent to."""
    kinds = list(dict.fromkeys(c.kind for c in config.approvals.notify))
    return f"link ({', '.join(kinds)})" if kinds else "link"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts)) if ts else "an unknown time"


def became(entry: Mapping[str, Any]) -> str:
    """What became of a request that no longer waits, in a sentence."""
    rid, state = entry["request_id"], entry["state"]
    if state in store.WAITING:
        return (f"Request {rid} waited in a goex-proxy that is no longer running; it was not sent and cannot be now.")
    who = f" by {entry['decided_by']}" if entry.get("decided_by") else ""
    why = f" ({entry['reason']})" if entry.get("reason") else ""
    if entry.get("kind") == "review":
        return f"Request {rid} did not wait: it was sent at once, because undo can take it back."
    return f"Request {rid} is no longer waiting: it was {state}{who} at {_when(entry.get('decided_at'))}{why}."


def _find(conn: sqlite3.Connection, token: str) -> tuple[str, str, float, float | None] | None:
    """A link's request, action, expiry and use (looked up by its hash, as `store` keeps it)."""
    found = conn.execute("SELECT request_id, action, expires, used_at FROM approval_links WHERE token_sha256 = ?",
                         (hashlib.sha256(token.encode()).hexdigest(),)).fetchone()
    return (str(found[0]), str(found[1]), float(found[2]), found[3]) if found else None


class Links:
    """The link server's view of the audit database: one connection, used by one request at a time, off the loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.by = by_of(config)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = audit.connect(self.config)
        return self._conn

    def _invalid(self, token: str, now: float) -> Answer | tuple[str, str]:
        """Why a link does not work (404, 410), or its request and action."""
        found = _find(self._db(), token) if _TOKEN.fullmatch(token) else None
        if found is None:
            return Answer(404, "Not a valid link", "This link is not valid. Links are made for one request each "
                                                   "and work once.")
        request_id, action, expires, used_at = found
        if used_at is not None:
            return Answer(410, "Link already used", f"This link was already used, at {_when(used_at)}. Each link "
                                                    "works once.")
        if now >= expires:
            return Answer(410, "Link expired", f"This link expired at {_when(expires)}.")
        return request_id, action

    def look(self, token: str) -> Answer:
        """What a GET shows: the request and the link's action, or why there is nothing to decide. Never acts."""
        with self._lock:
            found = self._invalid(token, time.time())
            if isinstance(found, Answer):
                return found
            entry = store.get(self._db(), found[0])
        if entry["state"] not in store.WAITING or not store.alive(entry["owner"]):
            return Answer(409, "Nothing to decide", became(entry), entry)
        title, _, _ = _WORDS.get((entry["kind"], found[1]), ("Decide this request?", found[1], ""))
        return Answer(200, title, "", entry, found[1])

    def act(self, token: str) -> Answer:
        """What a POST does: the link's action, exactly once (`store.use_link`), and what became of the request."""
        with self._lock:
            found = self._invalid(token, time.time())
            if isinstance(found, Answer):
                return found
            conn = self._db()
            try:
                settled = store.use_link(conn, token, self.by)
            except store.ApprovalError as exc:
                return Answer(409, "Nothing to decide", f"{exc}.", store.get(conn, found[0]))
        done = _WORDS.get((settled.entry["kind"], found[1]), ("", "", f"Done: {settled.state}."))[2]
        return Answer(200, done.partition(":")[0], done, settled.entry, found[1])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# The pages -------------------------------------------------------------------------------------------------------

_STYLE = """
body{font:16px/1.45 system-ui,sans-serif;margin:0 auto;max-width:40rem;padding:1rem;color:#111;background:#fff}
h1{font-size:1.3rem}.summary{padding:.75rem;background:#f4f4f4;border-radius:.4rem;overflow-wrap:anywhere}
dt{font-weight:600;margin-top:.6rem}dd{margin:0;overflow-wrap:anywhere}code{font-size:.9rem}
button{font-size:1.1rem;padding:.8rem 1.6rem;margin:1rem 0;border:0;border-radius:.4rem;color:#fff;background:#1a5fb4}
button.no{background:#a51d2d}.note{color:#555;font-size:.9rem}
"""
_COUNTDOWN = """
const left=document.getElementById("left");const end=Date.now()+1000*Number(left.dataset.seconds);
function tick(){const s=Math.max(0,Math.round((end-Date.now())/1000));
left.textContent=s>0?(s>=60?Math.floor(s/60)+" min "+(s%60)+" s":s+" s"):"no time: the wait is over";}
tick();setInterval(tick,1000);
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _card(entry: Mapping[str, Any]) -> dict[str, Any]:
    try:
        found = json.loads(entry.get("card") or "{}")
    except ValueError:
        found = {}
    return found if isinstance(found, dict) else {}


def _details(answer: Answer) -> str:
    """The card of the request a page decides on, every value escaped."""
    assert answer.entry is not None
    entry, card = answer.entry, _card(answer.entry)
    fields = card.get("fields") or {}
    undo = card.get("undo") or []
    left = max(0, round(float(entry.get("deadline") or 0) - time.time()))
    rows = [
        ("Request", f"<code>{_e(entry['request_id'])}</code> from agent <b>{_e(entry.get('agent') or '?')}</b>"),
        ("What it does", f"<code>{_e(card.get('method', ''))} {_e(card.get('url', ''))}</code>"),
        ("Undo class", _e(card.get("undo_class") or entry.get("undo_class") or "unknown")),
        ("What undo would send", "<br>".join(_e(step) for step in undo) or "nothing"),
        ("Why it waits", _e(card.get("why") or entry.get("why") or "")),
        ("Time left", f'<span id="left" data-seconds="{left}">{left} s</span> (until {_e(_when(entry.get("deadline")))})'),
    ]
    if isinstance(fields, dict) and fields:
        rows.insert(2, ("Fields", "<br>".join(f"<code>{_e(k)}</code> = {_e(v)}" for k, v in fields.items())))
    listed = "".join(f"<dt>{_e(name)}</dt><dd>{value}</dd>" for name, value in rows)
    return f'<p class="summary">{_e(card.get("summary", ""))}</p><dl>{listed}</dl>'


def render(answer: Answer, nonce: str) -> str:
    """A whole page, self-contained: inline style and script (allowed by their nonce only), no external asset."""
    body = f"<h1>{_e(answer.title)}</h1>"
    script = ""
    if answer.status == 200 and answer.action is not None and not answer.message:
        assert answer.entry is not None
        label = _WORDS.get((answer.entry["kind"], answer.action), ("", answer.action, ""))[1]
        kind = "no" if answer.action in ("deny", "cancel") else "yes"
        body += (f'{_details(answer)}<form method="post"><button class="{kind}" type="submit">{_e(label)}</button>'
                 '</form><p class="note">Opening this page did nothing; the button does, once. Each link works '
                 "once, and only while the request waits.</p>")
        script = f'<script nonce="{nonce}">{_COUNTDOWN}</script>'
    else:
        body += f"<p>{_e(answer.message)}</p>"
        if answer.entry is not None and answer.status == 200:
            body += f'<p class="summary">{_e(_card(answer.entry).get("summary", ""))}</p>'
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><meta name="referrer" content="no-referrer">'
            f"<title>{_e(answer.title)} · goex-proxy</title><style nonce=\"{nonce}\">{_STYLE}</style></head>"
            f"<body>{body}{script}</body></html>")


def _page(answer: Answer) -> Response:
    nonce = secrets.token_urlsafe(16)
    policy = (f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; form-action 'self'; "
              "frame-ancestors 'none'; base-uri 'none'")
    return HTMLResponse(render(answer, nonce), answer.status, headers={"Content-Security-Policy": policy})


# The app and its server ------------------------------------------------------------------------------------------


class Guard:
    """Refuses a Host the links are not served under (DNS rebinding), and adds the security headers to every answer."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *_SECURITY_HEADERS]
                if not any(name.lower() == b"content-security-policy" for name, _ in headers):
                    headers.append((b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"))
                message["headers"] = headers
            await send(message)

        hosts = [value.decode("latin-1").lower() for name, value in scope["headers"] if name == b"host"]
        if len(hosts) != 1 or hosts[0] not in self.hosts:
            await PlainTextResponse("this server answers only under its configured address\n", 400)(
                scope, receive, secured)
            return
        await self.app(scope, receive, secured)


def allowed_hosts(config: Config) -> frozenset[str]:
    """The Host headers links are served under: the listen address and the public URL's host (with or without its
    default port)."""
    assert config.approvals.listen is not None
    hosts = {netloc(*config.approvals.listen).lower()}
    if config.approvals.public_url:
        parts = urlsplit(config.approvals.public_url)
        default = 443 if parts.scheme == "https" else 80
        name = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else str(parts.hostname)
        hosts |= {f"{name}:{parts.port or default}".lower()}
        if parts.port in (None, default):
            hosts.add(name.lower())
    return frozenset(hosts)


def link_app(config: Config, links: Links) -> ASGIApp:
    """The Starlette app of the links (kept apart from the web console to come)."""

    async def answer(request: Request) -> Response:
        token = str(request.path_params["token"])
        work = links.act if request.method == "POST" else links.look
        try:
            return _page(await asyncio.to_thread(work, token))
        except (GoexError, sqlite3.Error) as exc:
            log.error("approval link: could not read the approvals: %s", exc)
            return _page(Answer(503, "Try again", "The approvals could not be read just now; nothing was done."))
        except Exception as exc:  # a bug: one line in the log, a plain page to the person, never a traceback
            log.error("approval link: %s: %s", type(exc).__name__, exc)
            return _page(Answer(500, "Something went wrong", "goex-proxy could not answer this link; its log says "
                                                             "why. Decide with `goex-proxy pending` instead."))

    prefix = urlsplit(config.approvals.public_url or "").path.rstrip("/")  # whether or not the proxy in front strips it
    paths = dict.fromkeys(["/a/{token}", f"{prefix}/a/{{token}}"])
    app = Starlette(routes=[Route(path, answer, methods=["GET", "POST"]) for path in paths])
    return Guard(app, allowed_hosts(config))


@dataclass
class LinkServer:
    """A running link server: `close()` stops it."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    links: Links
    address: tuple[str, int]

    async def close(self) -> None:
        await stop(self.server, self.task, "approval link server")
        await asyncio.to_thread(self.links.close)


def _bind(config: Config) -> socket.socket:
    assert config.approvals.listen is not None
    host, port = config.approvals.listen
    try:
        return listening_socket(host, port)
    except OSError as exc:
        raise StateError(f"cannot serve approval links on {netloc(host, port)}: {exc.strerror or exc} (change "
                         f"approvals.listen in {config.file})") from None


def _log_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the approval link server stopped: %s", task.exception())


async def serve_links(config: Config) -> LinkServer | None:
    """Serve the links on `approvals.listen` in the running event loop; None when the config serves none. Raises
    StateError when the address cannot be had."""
    if config.approvals.listen is None:
        return None
    sock = _bind(config)
    links = Links(config)
    server = EmbeddedServer(uvicorn.Config(link_app(config, links), log_config=None, log_level="warning", access_log=False,
                                    lifespan="off", server_header=False, proxy_headers=False, ws="none",
                                    timeout_graceful_shutdown=2, **OPTIONS))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    task.add_done_callback(_log_end)
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        sock.close()
        raise StateError("the approval link server could not start")
    return LinkServer(server, task, links, sock.getsockname()[:2])
