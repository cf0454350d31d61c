"""What the request path no longer spends per request: each test pins one saving of issue 20's (bench/README.md,
"The request path")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mitmproxy import hooks, http


def test_the_running_proxy_builds_requests_without_mitmproxys_field_type_checks(tmp_path: Path) -> None:
    """mitmproxy checks every field of every request and response it parses unless Python runs with -O (~41 µs of a
    GET); `run`'s master turns that off."""
    from goex_proxy.config import load_config
    from goex_proxy.policy.engine import PolicySet
    from goex_proxy.runtime import build_master

    config = tmp_path / "config.yaml"
    config.write_text("version: 1\n", encoding="utf-8")

    async def main() -> None:
        m = build_master(load_config(config), PolicySet())
        await m.addons.trigger_event(hooks.DoneHook())

    asyncio.run(main())
    # A str where mitmproxy's parser always gives bytes: its debug check would raise TypeError.
    http.ResponseData("HTTP/1.1", 200, b"OK", http.Headers(), b"", None, 1.0, 2.0)  # type: ignore[arg-type]
