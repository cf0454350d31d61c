"""The console's guard: its Host only, the start token traded once for a session cookie, CSRF, security headers."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The session cookie's name, followed by the console's port: cookies are not kept apart by port, and two consoles
#: (two state directories) on one machine must not sign each other out.
COOKIE = "goex_console"
MAX_SESSIONS = 1000
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


@dataclass
class Keys:
    """This start's secrets: the token printed once, the sessions it opened, and the key CSRF tokens are made with."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    sessions: set[str] = field(default_factory=set)

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token.encode())

    def open_session(self) -> str:
        """A new session for a browser that showed the token; past MAX_SESSIONS, the set starts again (every browser
        signs in again with the link) rather than grow without end."""
        if len(self.sessions) >= MAX_SESSIONS:
            self.sessions.clear()
        session = secrets.token_urlsafe(32)
        self.sessions.add(session)
        return session

    def session_ok(self, session: str | None) -> bool:
        return session is not None and any(hmac.compare_digest(session.encode(), s.encode()) for s in self.sessions)

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


_REFUSED = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not signed in · goex-proxy"
            "</title></head><body><h1>Not signed in</h1><p>Open the console with the link goex-proxy printed when "
            "it started (it carries a token, good until it stops).</p></body></html>")


class Guard:
    """In front of the console: a Host other than its own is refused (400, DNS rebinding); `?token=` is traded for an
    HttpOnly SameSite=Strict cookie and a redirect without it; nothing answers without the cookie (401); a state-changing
    request must come from the console's own origin. The security headers go on every answer."""

    def __init__(self, app: ASGIApp, keys: Keys, hosts: frozenset[str], origins: frozenset[str], secure: bool,
                 port: int) -> None:
        self.app, self.keys, self.hosts, self.origins, self.secure = app, keys, hosts, origins, secure
        self.cookie = f"{COOKIE}_{port}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"content-security-policy"]
                message["headers"] = [*headers, *SECURITY_HEADERS]
            await send(message)

        answer = self._refusal(scope)
        if answer is not None:
            await answer(scope, receive, secured)
            return
        await self.app(scope, receive, secured)

    def _refusal(self, scope: Scope) -> Response | None:
        hosts = [h.lower() for h in _header(scope, b"host")]
        if len(hosts) != 1 or hosts[0] not in self.hosts:
            return PlainTextResponse("this console answers only under its own address\n", 400)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        token = [v for k, v in query if k == "token"]
        if token:
            if len(token) != 1 or not self.keys.token_ok(token[0]) or scope["method"] != "GET":
                return HTMLResponse(_REFUSED, 401)
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            here = "/" + scope["path"].lstrip("/\\")  # never `//host`: that would leave the console
            redirect = RedirectResponse(here + (f"?{rest}" if rest else ""), 303)
            redirect.set_cookie(self.cookie, self.keys.open_session(), httponly=True, samesite="strict", secure=self.secure,
                                path="/")
            return redirect
        session = next((value for value in _cookies(scope, self.cookie) if self.keys.session_ok(value)), None)
        if not self.keys.session_ok(session):
            return HTMLResponse(_REFUSED, 401)
        scope.setdefault("state", {})["session"] = session
        if scope["method"] not in ("GET", "HEAD") and not self._same_origin(scope):
            return PlainTextResponse("refused: this request did not come from the console's own pages\n", 403)
        return None

    def _same_origin(self, scope: Scope) -> bool:
        """A state-changing request's Origin (when sent) is the console's, and the browser says it is same-origin."""
        origin = _header(scope, b"origin")
        if origin and (len(origin) != 1 or origin[0].lower() not in self.origins):
            return False
        site = _header(scope, b"sec-fetch-site")
        return not site or site[0] in ("same-origin", "none")
