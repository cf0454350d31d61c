"""The lock under which one goex-proxy process at a time refreshes a credential's OAuth2 tokens."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from goex_proxy.credentials import tokens
from goex_proxy.credentials.oauth import OAuthError
from goex_proxy.credentials.vault import Vault


def test_a_waiter_cancelled_leaves_nothing_locked(tmp_path: Path) -> None:
    """A refresh waiting for another process's is cancelled (its proxy stops); when the other lets go, the lock is
    free. (Waiting in a thread on a blocking flock took it later, for no one, and every refresh after hung.)"""
    vault = Vault(tmp_path)
    held = vault.try_lock_refresh("api-oauth")
    assert held is not None and vault.try_lock_refresh("api-oauth") is None

    async def main() -> None:
        waiter = asyncio.create_task(tokens._refresh_lock(vault, "api-oauth"))
        await asyncio.sleep(0.2)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    os.close(held)
    again = vault.try_lock_refresh("api-oauth")
    assert again is not None
    os.close(again)


def test_a_lock_held_too_long_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vault = Vault(tmp_path)
    held = vault.try_lock_refresh("api-oauth")
    monkeypatch.setattr(tokens, "REFRESH_LOCK_WAIT_S", 0.3)
    with pytest.raises(OAuthError, match="has been refreshing its tokens for over"):
        asyncio.run(tokens._refresh_lock(vault, "api-oauth"))
    assert held is not None
    os.close(held)
