"""The token keeper: one refresh at a time, a refused refresh remembered, an older vault read never wins."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from goex_proxy.config import load_config
from goex_proxy.credentials.oauth import OAuthError, TokenSet
from goex_proxy.credentials.tokens import TokenKeeper
from goex_proxy.credentials.vault import Vault, new_key_file

CONFIG = """version: 1
credentials:
  api:
    secret: api-oauth
    hosts: [api.example.com]
    inject: {oauth2: {provider: generic, client_id: c, token_url: "https://auth.example.com/token",
                      authorize_url: "https://auth.example.com/authorize"}}
"""


class Endpoint:
    """A token endpoint behind httpx.MockTransport: counts refreshes, answers slowly, can refuse."""

    def __init__(self) -> None:
        self.refreshes: list[str] = []
        self.refuse = False

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.refreshes.append(form["refresh_token"])
        await asyncio.sleep(0.05)  # long enough for every waiting request to pile up behind the lock
        if self.refuse:
            return httpx.Response(400, json={"error": "invalid_grant"})
        n = len(self.refreshes)
        return httpx.Response(200, json={"access_token": f"at-{n}", "refresh_token": f"rt-{n}", "expires_in": 3600})


@pytest.fixture
def keeper(tmp_path: Path) -> tuple[TokenKeeper, Endpoint, list[TokenSet]]:
    (tmp_path / "config.yaml").write_text(CONFIG)
    new_key_file(tmp_path / "vault.key")
    config = load_config(tmp_path / "config.yaml")
    endpoint, seen = Endpoint(), []
    client = httpx.AsyncClient(transport=httpx.MockTransport(endpoint))
    k = TokenKeeper(config, lambda: client, lambda credential, tokens: seen.append(tokens))
    k.load("api", TokenSet("at-0", "rt-0", time.time() - 1), None)  # expired
    return k, endpoint, seen


def test_concurrent_requests_share_one_refresh(keeper: tuple[TokenKeeper, Endpoint, list[TokenSet]]) -> None:
    k, endpoint, seen = keeper
    credential = k.config.credentials["api"]

    async def many() -> list[str]:
        return list(await asyncio.gather(*(k.access_token(credential) for _ in range(8))))

    assert asyncio.run(many()) == ["at-1"] * 8
    assert endpoint.refreshes == ["rt-0"] and [t.refresh_token for t in seen] == ["rt-1"]
    stored = TokenSet.loads(Vault(k.config.state_dir).get("api-oauth") or "")
    assert stored.access_token == "at-1" and stored.refresh_token == "rt-1"


def test_a_stale_token_is_refreshed_once(keeper: tuple[TokenKeeper, Endpoint, list[TokenSet]]) -> None:
    k, endpoint, _ = keeper
    credential = k.config.credentials["api"]

    k.load("api", TokenSet("at-0", "rt-0", time.time() + 3600), None)  # from the vault: its age is unknown

    async def scenario() -> list[str]:
        first = await k.access_token(credential)
        second = await k.access_token(credential, stale=first)    # the upstream said 401 to `first`
        third = await k.access_token(credential, stale=first)     # a request that raced the refresh
        fourth = await k.access_token(credential, stale=second)   # a 401 to a token refreshed just now
        return [first, second, third, fourth]

    assert asyncio.run(scenario()) == ["at-0", "at-1", "at-1", "at-1"]
    assert endpoint.refreshes == ["rt-0"], "a 401 to a fresh token must not refresh again"


def test_a_refused_refresh_is_remembered_until_the_vault_changes(
        keeper: tuple[TokenKeeper, Endpoint, list[TokenSet]]) -> None:
    k, endpoint, _ = keeper
    credential = k.config.credentials["api"]
    endpoint.refuse = True

    async def attempt() -> str:
        try:
            return await k.access_token(credential)
        except OAuthError as exc:
            return str(exc)

    assert "invalid_grant" in asyncio.run(attempt()) and "goex-proxy authorize api" in asyncio.run(attempt())
    assert len(endpoint.refreshes) == 1
    endpoint.refuse = False
    k.load("api", TokenSet("", "rt-new", None), None)  # `authorize` stored a new grant
    assert asyncio.run(attempt()) == "at-2"


def test_an_older_vault_read_does_not_replace_a_newer_refresh(
        keeper: tuple[TokenKeeper, Endpoint, list[TokenSet]]) -> None:
    k, endpoint, _ = keeper
    credential = k.config.credentials["api"]
    assert asyncio.run(k.access_token(credential)) == "at-1"
    k.load("api", TokenSet("at-0", "rt-0", time.time() - 1), None)  # read before our save landed
    assert asyncio.run(k.access_token(credential)) == "at-1" and endpoint.refreshes == ["rt-0"]


def test_without_tokens_it_says_to_authorize(keeper: tuple[TokenKeeper, Endpoint, list[TokenSet]]) -> None:
    k, endpoint, _ = keeper
    k.load("api", None, None)
    with pytest.raises(OAuthError, match="run `goex-proxy authorize api`"):
        asyncio.run(k.access_token(k.config.credentials["api"]))
    assert endpoint.refreshes == [] and json.loads(TokenSet().dumps())["type"] == "oauth2"
