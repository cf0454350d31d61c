"""`run --workers N`: N proxy processes on one listen address (SO_REUSEPORT: the kernel spreads the connections),
sharing the state directory. The first runs the console, the approval links and the retention as well; it starts
the others, starts one again when it dies, and stops them when it stops."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("goex_proxy.workers")

#: The most workers `run` starts by default: each is a whole proxy (about 100 MB), and the audit log takes one
#: writer at a time, so past a few the processes mostly wait on its lock.
DEFAULT_MOST = 8
#: A worker that dies is started again, but not more often than this many times a minute (then `run` stops).
RESTARTS_PER_MINUTE = 5
PR_SET_PDEATHSIG = 1


def default_count() -> int:
    """The number of cores this process may run on, at most DEFAULT_MOST."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, DEFAULT_MOST))


class SharedPortLoop(asyncio.SelectorEventLoop):
    """An event loop whose servers on the proxy's listen port bind it with SO_REUSEPORT, so that every worker listens
    on the same address (mitmproxy opens its server through the running loop). Other servers are left as they are."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.shared_port = port

    async def create_server(self, protocol_factory, host=None, port=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        if port == self.shared_port and kwargs.get("sock") is None:
            kwargs["reuse_port"] = True
        return await super().create_server(protocol_factory, host, port, *args, **kwargs)


def die_with_parent(parent: int) -> None:
    """In a worker: be sent SIGTERM when the `run` that started it ends, however it ends (and end now if it already
    has)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


class Workers:
    """The other workers of a `run`: each a `goex-proxy run --worker I` of the same config, its output on ours."""

    def __init__(self, config_file: Path, count: int, quiet: bool) -> None:
        self.config_file, self.count, self.quiet = config_file, count, quiet
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: list[float] = []
        self.stopping = False

    def argv(self, index: int) -> list[str]:
        return [sys.executable, "-m", "goex_proxy", "run", "--config", str(self.config_file), "--worker", str(index),
                "--parent", str(os.getpid()), *(["--quiet"] if self.quiet else [])]

    def start(self) -> None:
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self.procs[index] = subprocess.Popen(self.argv(index), stdin=subprocess.DEVNULL)

    async def watch(self, stop: asyncio.Event | None = None) -> None:
        """Start a worker again when it dies; past RESTARTS_PER_MINUTE, say so and stop this `run` (SIGTERM)."""
        while not self.stopping:
            await asyncio.sleep(0.5)
            for index, proc in list(self.procs.items()):
                if self.stopping or proc.poll() is None:
                    continue
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < 60] + [now]
                if len(self.restarts) > RESTARTS_PER_MINUTE:
                    log.error("worker %d exited with %s, and workers died %d times in a minute: stopping", index,
                              proc.returncode, len(self.restarts))
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                log.error("worker %d exited with %s; starting it again", index, proc.returncode)
                self._spawn(index)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every worker (each answers what it has in flight, as `run` does), then SIGKILL what is left."""
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
