"""`goex-proxy authorize`: the OAuth2 authorization-code flow with PKCE and a loopback redirect; tokens go to the vault."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..config import Config
from ..net import upstream
from .kinds import Credential
from .oauth import OAuth2, OAuthError, TokenSet, authorization_url, parse_token_reply, pkce_pair
from .tokens import token_post
from .vault import Vault

_PAGE = b"<!doctype html><title>goex-proxy</title><p>goex-proxy: %s You can close this tab.</p>\n"


class _Callback(BaseHTTPRequestHandler):
    server: _LoopbackServer
    timeout = 10  # seconds a connection may stay silent: one idle client must not hold the flow past --timeout

    def log_message(self, *args: Any) -> None:
        pass

    def _page(self, status: int, text: str) -> None:
        body = _PAGE % text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        answer = dict(parse_qsl(url.query))
        if url.path != "/callback" or not secrets.compare_digest(answer.get("state", ""), self.server.state):
            # Not the redirect this command asked for (another page, a forged state): ignored, the flow waits on.
            self._page(400, "this is not the answer to the authorization goex-proxy is waiting for.")
            return
        try:
            self.server.result = self.server.complete(answer)
        except OAuthError as exc:
            self.server.failure = exc
            self._page(200, "authorization failed; see the terminal.")
            return
        self._page(200, "authorized; the tokens are in the vault.")


class _LoopbackServer(HTTPServer):
    state: str
    complete: Callable[[dict[str, str]], TokenSet]
    result: TokenSet | None = None
    failure: OAuthError | None = None


def authorize(config: Config, credential: Credential, say: Callable[[str], None], open_browser: bool = True,
              timeout: float = 300.0) -> TokenSet:
    """Send the person to the provider's consent page, take the code at a loopback redirect, and store the tokens."""
    oauth = credential.inject.oauth2
    if oauth is None or credential.secret.vault is None:
        raise OAuthError(f"credential {credential.name!r} does not use oauth2 injection with a vault secret")
    client_secret = None
    if oauth.client_secret is not None:
        client_secret = oauth.client_secret.reveal(Vault(config.state_dir).all() if oauth.client_secret.vault else {})
        if client_secret is None:
            raise OAuthError(f"the client secret of {credential.name!r} ({oauth.client_secret.describe()}) is not set")
    verifier, challenge = pkce_pair()
    with _LoopbackServer(("127.0.0.1", oauth.redirect_port), _Callback) as server:
        redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/callback"
        server.state = secrets.token_urlsafe(24)

        def complete(answer: dict[str, str]) -> TokenSet:
            if "error" in answer or not answer.get("code"):
                detail = answer.get("error_description", "")
                raise OAuthError(f"the provider refused: {answer.get('error', 'no code in the redirect')}"
                                 + (f" ({detail[:200]})" if detail else ""))
            tokens = _exchange(config, oauth, client_secret, answer["code"], redirect_uri, verifier)
            assert credential.secret.vault is not None
            Vault(config.state_dir).set(credential.secret.vault, tokens.dumps())
            return tokens

        server.complete = complete
        url = authorization_url(oauth, redirect_uri, server.state, challenge)
        say(f"Open this address in a browser to let goex-proxy act as {credential.name}:\n\n  {url}\n\n"
            f"Waiting for the provider to redirect to {redirect_uri} ...")
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        deadline = time.monotonic() + timeout
        while server.result is None and server.failure is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OAuthError(f"no answer at {redirect_uri} within {timeout:.0f}s; nothing was stored")
            server.timeout = min(left, 1.0)
            server.handle_request()
        if server.failure is not None:
            raise server.failure
        assert server.result is not None
        return server.result


def _exchange(config: Config, oauth: OAuth2, client_secret: str | None, code: str, redirect_uri: str,
              verifier: str) -> TokenSet:
    """Trade the authorization code (and the PKCE verifier) for tokens at the token endpoint."""
    grant = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "code_verifier": verifier}
    try:
        with upstream.sync_client(config) as client:
            reply = client.post(**token_post(config, oauth, client_secret, grant))
    except Exception as exc:  # httpx's errors: connection refused, TLS, timeout
        raise OAuthError(f"the token endpoint {oauth.provider.token_url} could not be reached ({exc})") from None
    return parse_token_reply(oauth, reply.status_code, reply.content, TokenSet())
