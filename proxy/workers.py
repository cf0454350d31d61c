"""`run --workers N`: N proxy processes on one listen address, sharing the state directory. The first binds N
sockets to the address (SO_REUSEPORT) and steers every connection to one of those N (a socket filter on its flow
hash), so that no other process that joins the port later is ever handed one; each worker accepts on its own socket,
passed down to it. The first also runs the console, the approval links and the retention; it starts the others,
starts one again when it dies (while its config still loads with the same address), and stops them when it stops."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("goex_proxy.workers")

#: The most workers `run` starts by default: each is a whole proxy (about 100 MB), and the audit log takes one
#: writer at a time, so past a few the processes mostly wait on its lock.
DEFAULT_MOST = 8
#: A worker that dies is started again, but not more often than this many times a minute (then `run` stops).
RESTARTS_PER_MINUTE = 5
PR_SET_PDEATHSIG = 1
#: How long `run` gives its workers to stop before it kills them: longer than a worker takes at worst, which gives its
#: audit writer process 10 s and its writer thread 10 s (`audit.offload.STOP_SECONDS`, `AuditWriter.close`). Killed
#: first, a worker left its writer process (stopped with SIGSTOP, or hung) running for good, its rows in flight.
STOP_SECONDS = 25.0


def default_count() -> int:
    """The number of cores this process may run on, at most DEFAULT_MOST."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, DEFAULT_MOST))


#: setsockopt names (Linux, asm-generic/socket.h) and classic BPF opcodes.
SO_ATTACH_REUSEPORT_CBPF = 51
_BPF_LD_W_ABS, _BPF_ALU_MOD_K, _BPF_RET_A = 0x20, 0x94, 0x16
#: The packet's flow hash, as a classic BPF ancillary load (SKF_AD_OFF + SKF_AD_RXHASH): the filter sees a SYN's
#: empty payload, not its headers, and the hash differs per connection (TCP sets a random one on each socket).
_SKF_AD_RXHASH = (-0x1000 + 32) & 0xFFFFFFFF


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def listen_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on host:port in one SO_REUSEPORT group, the connections steered among them by their
    flow hash modulo `count`: a socket another process adds to the group later has index `count` or above and is
    never chosen (the first process keeps all of them open, so none leaves the group and lets a later one move into
    its place). OSError if the address cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY on these
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(socket.SOMAXCONN)
            sock.set_inheritable(True)
        program = (_SockFilter * 3)(_SockFilter(_BPF_LD_W_ABS, 0, 0, _SKF_AD_RXHASH),  # A = the flow's hash
                                    _SockFilter(_BPF_ALU_MOD_K, 0, 0, count),    # A %= count
                                    _SockFilter(_BPF_RET_A, 0, 0, 0))            # the socket at index A
        fprog = _SockFprog(3, program)
        made[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


class SharedPortLoop(asyncio.SelectorEventLoop):
    """An event loop whose server on the proxy's listen port accepts on a socket made by `listen_sockets` (mitmproxy
    opens its server through the running loop, by host and port). Other servers are left as they are."""

    def __init__(self, port: int, sock: socket.socket) -> None:
        super().__init__()
        self.shared_port, self.shared_sock = port, sock

    async def create_server(self, protocol_factory, host=None, port=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        if port == self.shared_port and kwargs.get("sock") is None:
            return await super().create_server(protocol_factory, *args, sock=self.shared_sock, **kwargs)
        return await super().create_server(protocol_factory, host, port, *args, **kwargs)


def die_with_parent(parent: int) -> None:
    """In a worker: be sent SIGTERM when the `run` that started it ends, however it ends (and end now if it already
    has)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


class Workers:
    """The other workers of a `run`: each a `goex-proxy run --worker I --listen-fd FD` of the same config, accepting
    on socket I of the first process's group, its output on ours."""

    def __init__(self, config_file: Path, sockets: list[socket.socket], quiet: bool,
                 still_same: Callable[[], str | None],
                 writer_link: Callable[[], socket.socket | None] | None = None) -> None:
        """`writer_link`: a new link to the first process's audit writer, handed to each worker as it starts (None, or
        no link: the worker starts a writer of its own)."""
        self.config_file, self.sockets, self.quiet, self.still_same = config_file, sockets, quiet, still_same
        self.writer_link = writer_link
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: list[float] = []
        self.stopping = False
        self.failed: str | None = None
        self.held: dict[int, str] = {}  # worker -> why it is not started again yet (said once)

    def argv(self, index: int) -> list[str]:
        return [sys.executable, "-m", "goex_proxy", "run", "--config", str(self.config_file), "--worker", str(index),
                "--parent", str(os.getpid()), "--listen-fd", str(self.sockets[index].fileno()),
                *(["--quiet"] if self.quiet else [])]

    def start(self) -> None:
        for index in range(1, len(self.sockets)):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if self.stopping:  # `run` started to stop meanwhile (while `watch` read the config, or before `start`): a
            return  # worker started now was never signalled, and `stop` waited its whole timeout for it
        link = self.writer_link() if self.writer_link is not None else None
        argv, fds = self.argv(index), [self.sockets[index].fileno()]
        if link is not None:
            argv += ["--writer-fd", str(link.fileno())]
            fds.append(link.fileno())
        try:
            self.procs[index] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=fds)
        finally:
            if link is not None:
                link.close()  # the worker's now (a worker that failed to start: the writer sees the link end)

    def terminate(self) -> None:
        """SIGTERM every worker now, none to be started again: they stop beside the first (`stop` waits for them)."""
        if not self.stopping:
            self.stopping = True
            self._signal_live()

    def _signal_live(self) -> None:
        """SIGTERM every worker still running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    async def watch(self) -> None:
        """Start a worker again when it dies, once its config loads with the address and state `run` started with
        (until then its socket waits: the kernel holds its connections). Past RESTARTS_PER_MINUTE deaths, stop this
        `run` with `failed` saying why."""
        while not self.stopping:
            await asyncio.sleep(0.5)
            for index, proc in list(self.procs.items()):
                if self.stopping or proc.poll() is None:
                    continue
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < 60] + [now]
                if len(self.restarts) > RESTARTS_PER_MINUTE:
                    self.failed = (f"worker {index} exited with {proc.returncode}, and workers died "
                                   f"{len(self.restarts)} times in a minute")
                    log.error("%s: stopping", self.failed)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                problem = await asyncio.to_thread(self.still_same)
                if problem is not None:
                    if self.held.get(index) != problem:
                        log.error("worker %d exited with %s; not started again while %s", index, proc.returncode,
                                  problem)
                    self.held[index] = problem
                    self.restarts.pop()
                    continue
                self.held.pop(index, None)
                log.error("worker %d exited with %s; starting it again", index, proc.returncode)
                self._spawn(index)

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """SIGTERM every worker (each answers what it has in flight, as `run` does), then SIGKILL what is left."""
        self.stopping = True
        self._signal_live()  # again: one `terminate` did not see (started as it ran) is stopped too
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
