"""OAuth2 access tokens kept fresh inside the proxy: refreshed before expiry or after a 401, saved back to the vault."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..config import Config
from ..net import upstream
from .kinds import Credential
from .oauth import OAuth2, OAuthError, TokenSet, parse_token_reply, token_request
from .vault import Vault

log = logging.getLogger(__name__)

#: After a refused refresh, requests are denied with the same reason for this long before the endpoint is asked again.
RETRY_AFTER = 30.0
#: A token the proxy got less than this long ago is not refreshed because of a 401: the 401 is about something else
#: (a missing scope), and refreshing on every such answer would hammer the token endpoint.
MIN_AGE_FOR_401_REFRESH = 30.0


def token_post(config: Config, oauth: OAuth2, client_secret: str | None, grant: dict[str, str]) -> dict[str, Any]:
    """The httpx `post` arguments of a token-endpoint request for `grant`, routed like the proxy's other requests."""
    headers, body = token_request(oauth, client_secret, grant)
    url, host_headers, extensions = upstream.routed(config, oauth.provider.token_url)
    return {"url": url, "headers": {**headers, **host_headers}, "content": body, "extensions": extensions}


#: How long a refresh waits for another process's refresh of the same credential.
REFRESH_LOCK_WAIT_S = 30.0


class TokenKeeper:
    """One refresh at a time per credential; every request waiting on it gets the new token (or the same refusal)."""

    def __init__(self, config: Config, client: Callable[[], Any], on_new_tokens: Callable[[Credential, TokenSet], None]) -> None:
        self.config = config
        self.client = client
        self.on_new_tokens = on_new_tokens
        self._sets: dict[str, TokenSet] = {}
        self._client_secrets: dict[str, str | None] = {}
        self._refreshed_at: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._refused: dict[str, tuple[float, str]] = {}

    def load(self, name: str, stored: TokenSet | None, client_secret: str | None) -> None:
        """Take what the vault holds (at start and whenever the vault changes); a new set clears a refusal."""
        self._client_secrets[name] = client_secret
        current = self._sets.get(name)
        if stored is None:
            self._sets.pop(name, None)
        elif current is not None and current.access_token and _outlives(current, stored):
            pass  # a vault read from before our own refresh was saved: ours is newer (its refresh token may be too)
        elif stored != current:
            self._sets[name] = stored
            self._refused.pop(name, None)

    async def access_token(self, credential: Credential, stale: str | None = None) -> str:
        """A usable access token; with `stale`, one other than that token (which the upstream just refused)."""
        oauth = credential.inject.oauth2
        assert oauth is not None
        async with self._locks.setdefault(credential.name, asyncio.Lock()):
            now = time.time()
            current = self._sets.get(credential.name)
            if current is None or not (current.refresh_token or current.access_token):
                raise OAuthError(f"no OAuth2 tokens are stored for it; run `goex-proxy authorize {credential.name}`")
            if stale is None and current.fresh(now, oauth.refresh_margin):
                return current.access_token
            if stale is not None and current.access_token and current.access_token != stale:
                return current.access_token  # another request refreshed it meanwhile
            if stale is not None and now - self._refreshed_at.get(credential.name, 0.0) < MIN_AGE_FOR_401_REFRESH:
                return current.access_token  # the same token: the caller lets the 401 stand
            refused = self._refused.get(credential.name)
            if refused and refused[0] > now:
                raise OAuthError(refused[1])
            if not current.refresh_token:
                raise OAuthError(f"its access token expired and it has no refresh token; run `goex-proxy authorize "
                                 f"{credential.name}`")
            try:
                fresh, ours = await self._refresh_once(credential, current, stale, oauth.refresh_margin)
            except OAuthError as exc:
                reason = f"refreshing its access token failed: {exc}; run `goex-proxy authorize {credential.name}`"
                self._refused[credential.name] = (now + RETRY_AFTER, reason)
                raise OAuthError(reason) from None
            self._sets[credential.name] = fresh
            self._refreshed_at[credential.name] = time.time()
            self.on_new_tokens(credential, fresh)
            log.info("%s the OAuth2 access token of %s", "refreshed" if ours else "took another goex-proxy's refreshed",
                     credential.name)
            return fresh.access_token

    async def _refresh_once(self, credential: Credential, current: TokenSet, stale: str | None,
                            margin: float) -> tuple[TokenSet, bool]:
        """Refresh under the vault's lock for this credential, shared by every goex-proxy process on the state
        directory: a provider that rotates refresh tokens refuses the second use of one, so a process that finds a
        set another process refreshed meanwhile takes it instead (True: this process refreshed)."""
        vault = Vault(self.config.state_dir)
        name = credential.secret.vault
        if name is None:  # tokens not kept in the vault: nothing to share
            return await self._refresh(credential, current), True
        fd = await _refresh_lock(vault, name)
        try:
            text = await asyncio.to_thread(vault.get, name)
            stored = TokenSet.loads(text) if text else None
            if stored is not None and stored != current and stored.access_token != stale and stored.fresh(time.time(),
                                                                                                           margin):
                return stored, False
            if stored is not None and stored.refresh_token:
                current = replace(current, refresh_token=stored.refresh_token)  # the newest one another process saved
            fresh = await self._refresh(credential, current)
            try:
                await asyncio.to_thread(self._save, credential, fresh)
            except Exception as exc:  # the new token works; other processes and a restart would need the saved one
                log.error("could not save the refreshed tokens of %s to the vault: %s", credential.name, exc)
            return fresh, True
        finally:
            os.close(fd)

    async def _refresh(self, credential: Credential, current: TokenSet) -> TokenSet:
        oauth = credential.inject.oauth2
        assert oauth is not None
        secret = self._client_secrets.get(credential.name)
        if oauth.client_secret is not None and secret is None:
            raise OAuthError(f"its client secret ({oauth.client_secret.describe()}) is not set")
        grant = {"grant_type": "refresh_token", "refresh_token": current.refresh_token}
        try:
            reply = await self.client().post(**token_post(self.config, oauth, secret, grant))
        except Exception as exc:  # httpx's errors: connection refused, TLS, timeout
            raise OAuthError(f"the token endpoint {oauth.provider.token_url} could not be reached "
                             f"({type(exc).__name__})") from None
        return parse_token_reply(oauth, reply.status_code, reply.content, current)

    def _save(self, credential: Credential, tokens: TokenSet) -> None:
        assert credential.secret.vault is not None
        Vault(self.config.state_dir).set(credential.secret.vault, tokens.dumps())


async def _refresh_lock(vault: Vault, name: str) -> int:
    """Wait (polling, up to REFRESH_LOCK_WAIT_S) for the right to refresh this credential's tokens; OAuthError past
    that (a process that holds it that long is stuck; the lock goes with the process if it dies)."""
    deadline = time.monotonic() + REFRESH_LOCK_WAIT_S
    while (fd := vault.try_lock_refresh(name)) is None:
        if time.monotonic() > deadline:
            raise OAuthError(f"another goex-proxy process has been refreshing its tokens for over "
                             f"{REFRESH_LOCK_WAIT_S:.0f} s")
        await asyncio.sleep(0.05)
    return fd


def _outlives(ours: TokenSet, stored: TokenSet) -> bool:
    """True when our set expires later than the stored one, which is then an older read of the vault."""
    return ours.expires_at is not None and stored.expires_at is not None and ours.expires_at > stored.expires_at
