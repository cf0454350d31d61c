"""A small OAuth2 authorization server and a protected API, over real HTTPS on 127.0.0.1.

`oauth.example` serves RFC 6749 + RFC 7636 as providers document them: `/authorize` (consent is granted at once and
the browser is redirected with `code` and `state`), `/token` (authorization_code with PKCE S256, refresh_token with
rotation, errors as `{"error": "invalid_grant", "error_description": ...}` with 400). `api.oauth.example` answers
`/me` for a live access token and 401 with `WWW-Authenticate: Bearer error="invalid_token"` otherwise; `/echo`
repeats the Authorization header it got (a careless API).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

CLIENT_ID = "goex-test-client"
CLIENT_SECRET = "CANARY-client-secret-8d2"


@dataclass
class OAuthState:
    lifetime: float = 2.0                                           # seconds an access token lives
    access: dict[str, float] = field(default_factory=dict)          # live access token -> expiry
    refresh: set[str] = field(default_factory=set)                  # live refresh tokens
    codes: dict[str, dict[str, str]] = field(default_factory=dict)  # code -> challenge, redirect_uri
    issued: list[str] = field(default_factory=list)                 # every token ever issued, access and refresh
    grants: list[str] = field(default_factory=list)                 # grant_type of each token request
    api_calls: list[tuple[str, int]] = field(default_factory=list)  # (path, status) the API answered
    api_headers: list[dict[str, str]] = field(default_factory=list)  # the headers of each API call
    lock: threading.Lock = field(default_factory=threading.Lock)
    serial: itertools.count = field(default_factory=lambda: itertools.count(1))

    def new_tokens(self) -> dict[str, Any]:
        n = next(self.serial)
        access, refresh = f"at-{n}-{secrets.token_hex(8)}", f"rt-{n}-{secrets.token_hex(8)}"
        self.access[access] = time.time() + self.lifetime
        self.refresh.add(refresh)
        self.issued += [access, refresh]
        return {"access_token": access, "token_type": "Bearer", "expires_in": self.lifetime, "refresh_token": refresh}

    def revoke_access(self) -> None:
        """The provider forgets every access token early (as on a password change), though each said it lived on."""
        with self.lock:
            self.access.clear()

    def revoke_refresh(self) -> None:
        """The person revoked the app's grant: refresh tokens stop working too."""
        with self.lock:
            self.access.clear()
            self.refresh.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        host = (self.headers.get("Host") or "").split(":")[0]
        state = self.server.state
        if host == "oauth.example" and url.path == "/authorize":
            q = dict(parse_qsl(url.query))
            if q.get("client_id") != CLIENT_ID or q.get("code_challenge_method") != "S256":
                return self._send(400, {"error": "invalid_request"})
            code = secrets.token_urlsafe(12)
            with state.lock:
                state.codes[code] = {"challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"]}
            target = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q.get("state", "")})
            return self._send(302, {}, {"Location": target})
        auth = self.headers.get("Authorization", "")
        with state.lock:
            token = auth.removeprefix("Bearer ")
            live = auth.startswith("Bearer ") and state.access.get(token, 0) > time.time()
            state.api_calls.append((url.path, 200 if live and url.path != "/scope-missing" else 401))
            state.api_headers.append(dict(self.headers.items()))
        if url.path == "/scope-missing":  # a live token without the scope this call needs
            return self._send(401, {"error": "insufficient_scope"},
                              {"WWW-Authenticate": 'Bearer error="insufficient_scope"'})
        if not live:
            return self._send(401, {"error": "invalid_token"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if url.path == "/echo":
            return self._send(200, {"authorization": auth})
        return self._send(200, {"user": "me", "token_serial": token.split("-")[1]})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(parse_qsl(self.rfile.read(length).decode()))
        state = self.server.state
        if urlsplit(self.path).path != "/token":
            return self._send(404, {"error": "not_found"})
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return self._send(401, {"error": "invalid_client"})
        with state.lock:
            state.grants.append(form.get("grant_type", ""))
            if form.get("grant_type") == "authorization_code":
                grant = state.codes.pop(form.get("code", ""), None)
                verifier = form.get("code_verifier", "")
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
                if grant is None or grant["challenge"] != challenge or grant["redirect_uri"] != form.get("redirect_uri"):
                    return self._send(400, {"error": "invalid_grant", "error_description": "bad code or verifier"})
                return self._send(200, state.new_tokens())
            if form.get("grant_type") == "refresh_token":
                if form.get("refresh_token") not in state.refresh:
                    # A careless provider that quotes the token it refused.
                    return self._send(400, {"error": "invalid_grant", "error_description":
                                            f"Token {form.get('refresh_token')} has been expired or revoked."})
                state.refresh.discard(form["refresh_token"])  # rotation: each refresh token works once
                return self._send(200, state.new_tokens())
        return self._send(400, {"error": "unsupported_grant_type"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: OAuthState


class FakeOAuth:
    """The authorization server and the API behind one HTTPS port, told apart by the Host header."""

    HOSTS = ("oauth.example", "api.oauth.example")
    CERT_NAMES = (*HOSTS, "127.0.0.1")  # the test plays the browser and reaches it by address

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self.state = OAuthState()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.state = self.state
        self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
