"""OAuth2 without the network: provider presets, token sets as stored in the vault, PKCE, and token-endpoint replies."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

from ..errors import GoexError
from ..secretref import SecretRef


class OAuthError(GoexError):
    """A token could not be had: no token stored, or the token endpoint refused (its `error` is in the message)."""


@dataclass(frozen=True)
class Provider:
    """Where a provider's authorization and token endpoints are, and the quirks of its replies."""

    name: str
    authorize_url: str = ""
    token_url: str = ""
    scope_separator: str = " "
    authorize_params: dict[str, str] = field(default_factory=dict)
    #: Slack answers user-token grants with the tokens under `authed_user`.
    nested_under: str = ""


PROVIDERS: dict[str, Provider] = {
    "google": Provider("google", "https://accounts.google.com/o/oauth2/v2/auth", "https://oauth2.googleapis.com/token",
                       authorize_params={"access_type": "offline", "prompt": "consent"}),
    "slack": Provider("slack", "https://slack.com/oauth/v2/authorize", "https://slack.com/api/oauth.v2.access",
                      scope_separator=","),
    "github": Provider("github", "https://github.com/login/oauth/authorize",
                       "https://github.com/login/oauth/access_token"),
    "generic": Provider("generic"),
}


@dataclass(frozen=True)
class OAuth2:
    """A credential's OAuth2 client: provider endpoints, client id and secret, scopes, when to refresh."""

    provider: Provider
    client_id: str
    client_secret: SecretRef | None = None
    scopes: tuple[str, ...] = ()
    refresh_margin: float = 60.0
    client_auth: str = "post"  # client id and secret in the form ("post") or as HTTP basic auth ("basic")
    redirect_port: int = 0     # 0: any free loopback port (Google); fixed where the provider registers one


@dataclass(frozen=True)
class TokenSet:
    """What the vault holds for an OAuth2 credential. The access token may be empty (not fetched yet)."""

    access_token: str = ""
    refresh_token: str = ""
    expires_at: float | None = None

    def fresh(self, now: float, margin: float) -> bool:
        """True while the access token is set and has more than `margin` seconds left."""
        return bool(self.access_token) and (self.expires_at is None or self.expires_at - now > margin)

    def values(self) -> list[str]:
        """The secret strings in this set (for scrubbing)."""
        return [v for v in (self.access_token, self.refresh_token) if v]

    def dumps(self) -> str:
        return json.dumps({"type": "oauth2", "access_token": self.access_token, "refresh_token": self.refresh_token,
                           "expires_at": self.expires_at})

    @classmethod
    def loads(cls, text: str) -> TokenSet:
        """A stored set; a plain string (`secrets set NAME` with a refresh token pasted in) is a refresh token."""
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return cls(refresh_token=text.strip())
        expires = data.get("expires_at")
        return cls(str(data.get("access_token") or ""), str(data.get("refresh_token") or ""),
                   float(expires) if isinstance(expires, int | float) else None)


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def authorization_url(oauth: OAuth2, redirect_uri: str, state: str, challenge: str) -> str:
    params = {"response_type": "code", "client_id": oauth.client_id, "redirect_uri": redirect_uri, "state": state,
              "code_challenge": challenge, "code_challenge_method": "S256", **oauth.provider.authorize_params}
    if oauth.scopes:
        params["scope"] = oauth.provider.scope_separator.join(oauth.scopes)
    sep = "&" if "?" in oauth.provider.authorize_url else "?"
    return oauth.provider.authorize_url + sep + urlencode(params)


def token_request(oauth: OAuth2, client_secret: str | None, grant: dict[str, str]) -> tuple[dict[str, str], bytes]:
    """Headers and form body of a token-endpoint request for `grant` (refresh or authorization code)."""
    form = dict(grant)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if oauth.client_auth == "basic" and client_secret is not None:
        pair = f"{oauth.client_id}:{client_secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    else:
        form["client_id"] = oauth.client_id
        if client_secret is not None:
            form["client_secret"] = client_secret
    return headers, urlencode(form).encode()


def whole_words(text: str, limit: int = 200) -> str:
    """At most `limit` characters of what an endpoint said, never part of a word: a token it quotes, cut short, would
    pass the scrubber (which replaces whole spellings) as a piece of the secret."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    if not text[limit].isspace():
        head = head.rsplit(None, 1)[0] if any(c.isspace() for c in head) else ""
    return head.rstrip() + " …"


def parse_token_reply(oauth: OAuth2, status: int, body: bytes, previous: TokenSet, now: float | None = None) -> TokenSet:
    """The token set a token endpoint answered, or OAuthError naming what it said (never a token)."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = dict(parse_qsl(body.decode("utf-8", "replace")))  # GitHub's form-encoded answer, if Accept was ignored
    if not isinstance(data, dict):
        data = {}
    if oauth.provider.nested_under and isinstance(data.get(oauth.provider.nested_under), dict):
        data = {**data, **data[oauth.provider.nested_under]}
    error = data.get("error")
    if status >= 400 or error or data.get("ok") is False or not isinstance(data.get("access_token"), str):
        what = str(error or (f"HTTP {status}" if status >= 400 else "no access_token in the reply"))
        detail = data.get("error_description")
        raise OAuthError(f"the token endpoint refused: {whole_words(what)}"
                         + (f" ({whole_words(str(detail))})" if detail else ""))
    expires_in = data.get("expires_in")
    try:
        expires_at = (now or time.time()) + float(expires_in) if expires_in not in (None, "") else None
    except (TypeError, ValueError):
        expires_at = None
    refresh = data.get("refresh_token")
    return replace(previous, access_token=data["access_token"], expires_at=expires_at,
                   refresh_token=refresh if isinstance(refresh, str) and refresh else previous.refresh_token)
