"""`run --workers N` stopping: every worker it started is signalled, whenever it was started."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

from goex_proxy.workers import Workers


class _Sleepers(Workers):
    """Workers that are a Python that sleeps (SIGTERM ends it at once), each counted as it starts."""

    def argv(self, index: int) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_worker_started_again_as_run_starts_to_stop_is_stopped_with_the_others() -> None:
    """A worker dies; while `watch` reads the config again (in a thread) `run` starts to stop (`terminate`). The
    worker `watch` then starts was never signalled, and `stop`, which no longer signalled the workers itself, waited
    its whole timeout for it (25 s in `run`) before it killed it."""
    sockets = [socket.socket() for _ in range(2)]
    workers: Workers | None = None

    def still_same() -> str | None:
        assert workers is not None
        workers.terminate()  # Ctrl-C now, while the config is read
        return None

    workers = _Sleepers(Path("/nonexistent"), sockets, True, still_same)
    try:
        workers.start()
        workers.procs[1].kill()
        workers.procs[1].wait()

        async def watch() -> None:
            assert workers is not None
            await asyncio.wait_for(workers.watch(), 10)

        asyncio.run(watch())
        started = time.monotonic()
        workers.stop(timeout=15)
        assert time.monotonic() - started < 5, "a worker started as run stopped was never signalled"
    finally:
        for proc in workers.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for sock in sockets:
            sock.close()


def test_no_worker_is_started_once_run_started_to_stop() -> None:
    """Ctrl-C while the first process starts its console or approval links, before it starts its workers: none is
    started then (each would have been left unsignalled, `stop` waiting its whole timeout for it)."""
    sockets = [socket.socket() for _ in range(3)]
    workers = _Sleepers(Path("/nonexistent"), sockets, True, lambda: None)
    try:
        workers.terminate()
        workers.start()
        assert workers.procs == {}
    finally:
        for proc in workers.procs.values():
            proc.kill()
            proc.wait()
        for sock in sockets:
            sock.close()
