"""`audit.retention` for `goex-proxy run`: prunes the audit log at start and every 6 hours, one batch of rows per
write transaction of the proxy's own audit writer (requests are recorded in between)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from goex_proxy.addons.state import ProxyState
from goex_proxy.audit.blobs import REWRITES, replace_unnamed_bases
from goex_proxy.audit.prune import Pruned, check_counts, prune_batch, upper_bound
from goex_proxy.audit.store import open_db

log = logging.getLogger("goex_proxy.retention")
#: How often `run` prunes (it also does at start).
EVERY_S = 6 * 3600.0


class Retention:
    """Not a stage: a task beside the pipeline while `run` runs, when the config sets `audit.retention`."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self._task: asyncio.Task[None] | None = None

    def running(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._every())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _every(self) -> None:
        while True:
            try:
                await self.prune_once()
            except Exception as exc:  # the proxy goes on; the next round tries again
                log.error("audit retention: not pruned: %s", exc)
            await asyncio.sleep(EVERY_S)

    async def prune_once(self) -> Pruned | None:
        """One prune by the retention the config says now (None: it says none, or there is no log)."""
        config, writer = self.state.config, self.state.writer
        if config is None or writer is None or config.retention is None:
            return None
        key = writer.seal.key()
        if key is None:
            return None
        await asyncio.to_thread(_check_counts, config.audit_db)
        before, windows, done = time.time() - config.retention, self.state.policies.limit_windows(), Pruned()
        upper = await asyncio.wrap_future(writer.apply(lambda conn, w: upper_bound(conn, before, w.seal.anchor())))
        after: int | None = 0
        while after is not None:
            after = await asyncio.wrap_future(writer.apply(lambda conn, w, start=after: prune_batch(
                conn, key, before, windows, after=start, upper=upper, done=done)))
        while done.rows:  # what the removed rows held goes, though kept values were built on it
            if await asyncio.wrap_future(writer.apply(lambda conn, w: replace_unnamed_bases(conn))) < REWRITES:
                break
        if done.rows:
            kept = ", ".join(f"{n} {why}" for why, n in sorted(done.kept.items()))
            log.info("audit retention: pruned %d rows older than the retention%s", done.rows,
                     f" (kept older rows: {kept})" if kept else "")
        return done


def _check_counts(audit_db: Path) -> None:
    """`check_counts` on a connection of its own: its pass over every row holds no write lock."""
    conn = open_db(audit_db, readonly=True)
    try:
        check_counts(conn)
    finally:
        conn.close()
