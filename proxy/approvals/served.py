"""uvicorn inside goex-proxy's own event loop, for the link server and the console: no signal handlers of its own,
and a connection that sends no complete request head in time is closed (uvicorn has no such timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Generator
from typing import Any

import uvicorn

log = logging.getLogger(__name__)

#: Seconds a connection may stay open without a request in progress or answered; then it is closed.
HEAD_SECONDS = 10.0
#: Options every embedded server runs with: a cap on requests served at once (past it, 503), short keep-alive.
OPTIONS: dict[str, Any] = {"limit_concurrency": 64, "timeout_keep_alive": 5, "backlog": 128}


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server whose owner decides when it stops, and which closes connections that idle without a request
    (a client holding thousands open would use up the proxy's file descriptors)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._seen: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # once a second
            self._close_silent(time.monotonic())
        return await super().on_tick(counter)

    def _close_silent(self, now: float) -> None:
        for protocol in list(self.server_state.connections):
            first = self._seen.setdefault(protocol, now)
            if getattr(protocol, "cycle", None) is None and now - first > HEAD_SECONDS:
                transport = getattr(protocol, "transport", None)
                if transport is not None:
                    transport.close()


async def stop(server: uvicorn.Server, task: asyncio.Task[None], what: str) -> None:
    """Stop an embedded server: let it finish what it serves (5 s at most), else cancel it and say so."""
    server.should_exit = True
    try:
        if not task.done():
            await asyncio.wait_for(asyncio.shield(task), 5)
    except Exception as exc:  # it stops either way; say why it did not stop cleanly
        task.cancel()
        log.warning("the %s did not stop cleanly: %s", what, type(exc).__name__)
