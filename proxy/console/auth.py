"""The console's guard: its Host only, one-time sign-in links traded for a session cookie that ends when idle and at
a set age, CSRF, security headers."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The session cookie's name, followed by the console's port: cookies are not kept apart by port, and two consoles
#: (two state directories) on one machine must not sign each other out. Under TLS it is `__Host-` prefixed: a browser
#: then takes it only from a secure origin, without a Domain, for the whole host (no plain-HTTP server can set it).
COOKIE = "goex_console"
MAX_SESSIONS = 1000
#: How long a sign-in link is good, if nobody opens it first (it is good once). Long enough to go from the terminal
#: to a browser, even on another device; short enough that a link left in scrollback, a shell history, a log or a
#: shared screen opens nothing for long. `goex-proxy console link` makes another at any time.
LINK_SECONDS = 600.0
#: A session ends after this long without a request from its browser (an open live log counts: its stream sends a
#: line at least every 15 s), and in any case this long after it was opened. The cookie is sent to every server on
#: this host (cookies are not kept apart by port): these bound how long a copy of it that another local server saw
#: is worth anything.
IDLE_SECONDS = 30 * 60.0
LIFETIME_SECONDS = 12 * 3600.0
#: Every answer's headers: nothing cached, framed, sniffed or referred; only the console's own assets.
SECURITY_HEADERS = [
    (b"referrer-policy", b"same-origin"),  # no-referrer would make Chromium send "Origin: null" on its forms
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-robots-tag", b"noindex, nofollow"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def mint_link(conn: sqlite3.Connection, now: float | None = None) -> str:
    """A new sign-in token, stored only as its SHA-256 in the audit database's `console_links` (any console over this
    state directory takes it), good once for LINK_SECONDS; links past their time are removed."""
    now = time.time() if now is None else now
    token = secrets.token_urlsafe(32)
    with conn:
        conn.execute("DELETE FROM console_links WHERE expires <= ?", (now,))
        conn.execute("INSERT INTO console_links (token_sha256, made, expires, used_at) VALUES (?, ?, ?, NULL)",
                     (_sha256(token), now, now + LINK_SECONDS))
    return token


def redeem_link(conn: sqlite3.Connection, token: str, now: float | None = None) -> bool:
    """Whether `token` is a link's that was not used and has not expired; it is used from now on (one UPDATE: two
    browsers opening it at once, in one console or two, cannot both sign in)."""
    now = time.time() if now is None else now
    with conn:
        done = conn.execute("UPDATE console_links SET used_at = ? WHERE token_sha256 = ? AND used_at IS NULL "
                            "AND expires > ?", (now, _sha256(token), now))
    return done.rowcount == 1


@dataclass
class Session:
    made: float
    seen: float


@dataclass
class Keys:
    """This start's secrets: the sessions signed in (by the SHA-256 of their cookie) and the key CSRF tokens are made
    with."""

    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    sessions: dict[str, Session] = field(default_factory=dict)
    idle: float = IDLE_SECONDS
    lifetime: float = LIFETIME_SECONDS

    def open_session(self, now: float | None = None) -> str:
        """A new session for a browser that opened a link; past MAX_SESSIONS, the ended ones are dropped, and if that
        is not enough the set starts again (every browser signs in again) rather than grow without end."""
        now = time.monotonic() if now is None else now
        if len(self.sessions) >= MAX_SESSIONS:
            self.sessions = {k: s for k, s in self.sessions.items() if self._live(s, now)}
            if len(self.sessions) >= MAX_SESSIONS:
                self.sessions.clear()
        session = secrets.token_urlsafe(32)
        self.sessions[_sha256(session)] = Session(now, now)
        return session

    def _live(self, found: Session, now: float) -> bool:
        return now - found.seen < self.idle and now - found.made < self.lifetime

    def session_ok(self, session: str | None, now: float | None = None) -> bool:
        """Whether `session` is a cookie this console gave and its session has not ended (idle, or too old)."""
        if session is None:
            return False
        now = time.monotonic() if now is None else now
        key = _sha256(session)
        found = self.sessions.get(key)
        if found is None:
            return False
        if not self._live(found, now):
            del self.sessions[key]
            return False
        return True

    def touch(self, session: str, now: float | None = None) -> None:
        """The session's browser did something (a request, or its live log got a line): its idle time starts over."""
        found = self.sessions.get(_sha256(session))
        if found is not None:
            found.seen = time.monotonic() if now is None else now

    def csrf(self, session: str) -> str:
        """The CSRF token of a session: forms carry it, POSTs must."""
        return hmac.new(self.csrf_key, session.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: str, given: str) -> bool:
        return hmac.compare_digest(self.csrf(session).encode(), given.encode())


def _cookies(scope: Scope, wanted: str) -> list[str]:
    """Every value sent under this cookie name: another local server may set one of the same name (cookies are not
    kept apart by port), which must not hide the console's own."""
    out = []
    for name, value in scope["headers"]:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == wanted:
                    out.append(str(val))
    return out


def _header(scope: Scope, wanted: bytes) -> list[str]:
    return [v.decode("latin-1") for n, v in scope["headers"] if n == wanted]


NEW_LINK = "goex-proxy console link"
_PAGE = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not signed in · goex-proxy"
         "</title></head><body><h1>Not signed in</h1><p>{why} For a new sign-in link, run <code>" + NEW_LINK +
         "</code> (add <code>--config</code> if this console has its own); open it within " +
         f"{int(LINK_SECONDS // 60)} minutes. Each link signs in once.</p></body></html>")
_REFUSED = _PAGE.format(why="Open the console with a sign-in link.")
_SPENT = _PAGE.format(why="This sign-in link was already used, or has expired.")


class Guard:
    """In front of the console: a Host other than its own is refused (400, DNS rebinding); a link's `?token=` is
    traded, once, for an HttpOnly SameSite=Strict cookie and a redirect without it; nothing answers without a live
    session (401); a state-changing request must come from the console's own origin. The security headers go on every
    answer."""

    def __init__(self, app: ASGIApp, keys: Keys, redeem: Callable[[str], Awaitable[bool]], hosts: frozenset[str],
                 origins: frozenset[str], secure: bool, port: int) -> None:
        self.app, self.keys, self.redeem, self.hosts, self.origins, self.secure = app, keys, redeem, hosts, origins, \
            secure
        self.cookie = ("__Host-" if secure else "") + f"{COOKIE}_{port}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"content-security-policy"]
                message["headers"] = [*headers, *SECURITY_HEADERS]
            elif message["type"] == "http.response.body" and session is not None:
                self.keys.touch(session)  # a long answer (the live log's stream) is activity while it flows
            await send(message)

        session: str | None = None
        answer = await self._refusal(scope)
        if answer is not None:
            await answer(scope, receive, secured)
            return
        session = scope["state"]["session"]
        self.keys.touch(session)
        await self.app(scope, receive, secured)

    def _session(self, scope: Scope) -> str | None:
        return next((value for value in _cookies(scope, self.cookie) if self.keys.session_ok(value)), None)

    async def _refusal(self, scope: Scope) -> Response | None:
        hosts = [h.lower() for h in _header(scope, b"host")]
        if len(hosts) != 1 or hosts[0] not in self.hosts:
            return PlainTextResponse("this console answers only under its own address\n", 400)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        token = [v for k, v in query if k == "token"]
        if token:
            if len(token) != 1 or scope["method"] != "GET":
                return HTMLResponse(_REFUSED, 401)
            fresh = await self.redeem(token[0])
            if not fresh and self._session(scope) is None:
                return HTMLResponse(_SPENT, 401)
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            here = "/" + scope["path"].lstrip("/\\")  # never `//host`: that would leave the console
            redirect = RedirectResponse(here + (f"?{rest}" if rest else ""), 303)
            if fresh:  # a used link opened again by a browser signed in (the back button): only the redirect
                redirect.set_cookie(self.cookie, self.keys.open_session(), httponly=True, samesite="strict",
                                    secure=self.secure, path="/")
            return redirect
        session = self._session(scope)
        if session is None:
            return HTMLResponse(_REFUSED, 401)
        scope.setdefault("state", {})["session"] = session
        if scope["method"] not in ("GET", "HEAD") and not self._same_origin(scope):
            return PlainTextResponse("refused: this request did not come from the console's own pages\n", 403)
        return None

    def _same_origin(self, scope: Scope) -> bool:
        """A state-changing request's Origin (when sent) is the console's, and a browser that sends Sec-Fetch headers
        at all says it is same-origin (not `none`, `same-site` or `cross-site`: another server on this host, at
        another port, is same-site)."""
        origin = _header(scope, b"origin")
        if origin and (len(origin) != 1 or origin[0].lower() not in self.origins):
            return False
        fetch = [n for n, _ in scope["headers"] if n.startswith(b"sec-fetch-")]
        return not fetch or _header(scope, b"sec-fetch-site") == ["same-origin"]
