"""Jailed commands: namespaces of their own (network, mounts, processes), a copy-on-write workspace, and a listener
that is the only way out, bridged from outside to the proxy."""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import GoexError
from . import agentenv, pidcap, runs
from .view import View, jail_env, view_for

#: Seconds the jail's first process may take to set up its namespace before the command is given up on.
SETUP_TIMEOUT = 10.0
_INIT = Path(__file__).with_name("jailinit.py")
#: The most connections a jail's listeners are bridged at once (each is two threads and two sockets here); the next
#: waits in the listener's backlog until one ends. Without it, a jail held to a few processes could make goex-proxy
#: start threads, outside its cap, until the machine had no process slots (or goex-proxy no file descriptors) left.
MOST_BRIDGED = 256


class JailError(GoexError):
    """The namespace could not be made; the command was not run."""


class Jail:
    """Runs a command in namespaces of its own, seeing the machine as `spec` says (see `jailinit`). Inside,
    127.0.0.1:`port` is the proxy: connections to it are accepted by a listener created in the jail and passed out,
    and bridged here to `proxy` in the host's namespace; likewise 127.0.0.1:each of `more_ports` to the matching
    address of `more` (the database gateway). Nothing else inside the jail reaches any network."""

    def __init__(self, spec: dict[str, Any], env: dict[str, str], proxy: tuple[str, int],
                 more: tuple[tuple[str, int], ...] = (), **popen: Any) -> None:
        """`popen`: more `subprocess.Popen` arguments for the command (stdin, stderr, start_new_session). Without
        start_new_session, the jail leads a process group of its own: a terminal's signals reach only its caller,
        which passes them on (once: each of the jail's processes passes on what it is sent)."""
        if not popen.get("start_new_session"):
            popen["process_group"] = 0
        self.proxy = proxy
        self._targets = (proxy, *more)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.child = subprocess.Popen([sys.executable, "-I", "-S", str(_INIT), str(theirs.fileno())], env=env,
                                          pass_fds=(theirs.fileno(),), **popen)
        finally:
            theirs.close()
        self._pids = self._cap_as_root(spec.get("max_processes"))
        with ours:
            payload = marshal.dumps(spec)  # plain data to our own child; marshal needs no import there
            ours.sendall(struct.pack("!I", len(payload)) + payload)
            listeners = self._receive_listeners(ours)
        self._listeners = listeners
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(MOST_BRIDGED)
        self._closed = False
        self._threads = [threading.Thread(target=self._accept, args=(listener, target), name="goex-jail-bridge",
                                          daemon=True) for listener, target in zip(listeners, self._targets, strict=True)]
        for thread in self._threads:
            thread.start()

    def _cap_as_root(self, most: int | None) -> Path | None:
        """Run as root, the jail's process cap is a pids cgroup (the kernel holds root to no RLIMIT_NPROC), made
        before the jail's first process, still waiting for its spec, has started any other."""
        if not most or os.geteuid() != 0:
            return None
        group = pidcap.cap(self.child.pid, most + 1, f"{os.getpid()}-{self.child.pid}")  # + the first process
        if group is None:  # on stderr, as the jail's own errors are: a log handler may be the command's stdout
            sys.stderr.write("goex-proxy: sandbox.max_processes does not hold for this jail: run as root, it needs a "
                             "pids cgroup, and none can be made here (no pids controller, or /sys/fs/cgroup is "
                             "read-only)\n")
        return group

    def _receive_listeners(self, channel: socket.socket) -> list[socket.socket]:
        channel.settimeout(SETUP_TIMEOUT)
        try:
            message, fds, _, _ = socket.recv_fds(channel, 4096, len(self._targets))
        except (TimeoutError, OSError) as exc:
            self.child.kill()
            self.child.wait()
            raise JailError(f"the jail was not set up in time: {exc}") from None
        if message != b"ok" or len(fds) != len(self._targets):
            for fd in fds:
                socket.close(fd)
            self.child.wait()
            why = message.decode(errors="replace").removeprefix("error: ") or "its first process ended"
            raise JailError(f"cannot make the jail: {why} (this kernel may not allow unprivileged user namespaces: "
                            "see `sysctl user.max_user_namespaces` and `kernel.apparmor_restrict_unprivileged_userns`; "
                            "inside a container or VM, use `--no-jail` or `goex-proxy env`); the command was not run")
        return [socket.socket(fileno=fd) for fd in fds]

    def _accept(self, listener: socket.socket, target: tuple[str, int]) -> None:
        """Bridge each connection made to one of the jail's listeners to its target (threads: no event loop to
        start)."""
        while True:
            self._slots.acquire()  # given back when the connection ends, or by close()
            try:
                inside, _ = listener.accept()
            except OSError:  # the listener was closed: the jail is over
                return
            try:
                outside = socket.create_connection(target, timeout=SETUP_TIMEOUT)
                outside.settimeout(None)
            except OSError:
                inside.close()
                self._slots.release()
                continue
            with self._lock:
                if self._closed:
                    inside.close()
                    outside.close()
                    return
                self._open.update((inside, outside))
            ends = [2]
            for source, sink in ((inside, outside), (outside, inside)):
                threading.Thread(target=self._pump, args=(source, sink, inside, outside, ends), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, inside: socket.socket, outside: socket.socket,
              ends: list[int]) -> None:
        """Copy one direction until it ends, then half-close it; the second direction to end closes both sockets."""
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:  # a reset or broken pipe on either side ends the whole connection
            for s in (inside, outside):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        with self._lock:
            ends[0] -= 1
            if ends[0] == 0:
                for s in (inside, outside):
                    self._open.discard(s)
                    s.close()
                self._slots.release()

    def close(self) -> None:
        """Stop bridging (connections still open are cut)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            still_open = list(self._open)
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._slots.release(len(self._threads))  # an accepting thread waiting for a slot finds its listener closed
        for s in still_open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        if self._pids is not None and self.child.poll() is not None:
            pidcap.release(self._pids)


@contextlib.contextmanager
def proxy_for_jail(config: Config) -> Iterator[Config]:
    """The config a jail is bridged with: the running proxy's, or that of a proxy started here until the block ends."""
    agentenv.check_ca(config)
    if agentenv.listening(config):  # `run`, which also serves the database gateway when databases are configured
        yield config
        return
    from ..policy.load import load_policy_set  # mitmproxy and CEL: a quarter second, only paid without a proxy
    from ..runtime import InProcessProxy

    in_process = InProcessProxy(config, load_policy_set(config.policy_sources))
    gateway = None
    try:
        bridged = in_process.config
        if config.databases.by_name:
            from ..db.gateway import InProcessGateway

            gateway = InProcessGateway(bridged)
            bridged = gateway.config
        with _waits_told():
            yield bridged
    finally:
        if gateway is not None:
            gateway.close()
        in_process.close()


class _Told(logging.Formatter):
    """`goex-proxy: ` and the line; a request that starts waiting also says how to decide it."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if text.startswith(("held", "delayed")):
            text += " (decide from another shell: goex-proxy approve ID, deny ID or, for a delay, cancel ID)"
        return f"goex-proxy: {text}"


@contextlib.contextmanager
def _waits_told() -> Iterator[None]:
    """With no `run` to show them, the person at this command is told on stderr when a request waits for them (and
    what became of it), so that a held request is not a silent hang; the command's own output stays its own."""
    import logging

    live = logging.getLogger("goex_proxy.live")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Told())
    saved = live.level, live.propagate
    live.setLevel(logging.INFO)
    live.propagate = False
    live.addHandler(handler)
    try:
        yield
    finally:
        live.removeHandler(handler)
        live.setLevel(saved[0])
        live.propagate = saved[1]


class JailedRun:
    """A command running in a jail on a workspace, and the run directory its file changes are layered in."""

    def __init__(self, config: Config, agent: str, command: list[str], view: View, env: dict[str, str],
                 **popen: Any) -> None:
        self.config, self.agent, self.command, self.view = config, agent, command, view
        self.run = runs.new_run_dir(config)
        self.started = time.time()
        gateway = agentenv.gateway_address(config) if config.databases.for_agent(agent) else None
        spec = {**asdict(view), "port": config.listen_port, "root": str(self.run.path / "root"),
                "run_dir": str(self.run.path), "command": command,
                "more_ports": [config.databases.listen[1]] if gateway else [],
                "max_processes": config.sandbox.max_processes}
        try:
            self.jail = Jail(spec, env, agentenv.proxy_address(config), (gateway,) if gateway else (), **popen)
        except BaseException:
            runs.remove_tree(self.run.path)
            raise
        self.child = self.jail.child

    def wait(self, timeout: float | None = None) -> int:
        """The command's exit status once it has ended (TimeoutExpired past `timeout`); the bridge stays up."""
        return self.child.wait(timeout)

    def close(self) -> None:
        self.jail.close()

    def finish(self, exit_code: int | None, apply: bool) -> runs.Run | None:
        """Once the jail has ended: record what it changed in the workspace, and apply it when `apply`."""
        self.jail.close()
        return runs.finish(self.config, self.run, self.agent, self.view.workspace, self.command, self.started,
                           exit_code, apply)


def start_jailed(config: Config, agent: str, command: list[str], workspace: Path | None = None,
                 reveal: tuple[Path, ...] = (), **popen: Any) -> JailedRun:
    """COMMAND started in a jail on `workspace` (default: the current directory) with the agent's proxy settings
    (from `proxy_for_jail`'s config); `reveal`: files of ours it may read (not write) at their paths, such as the
    program `execute` runs."""
    cwd = Path.cwd()
    view = view_for(config, workspace or cwd, cwd)
    if reveal:
        view = replace(view, reveal=(*view.reveal, *(os.path.realpath(p) for p in reveal)))
    agent_settings = agentenv.agent_env(config, agent, proxy_host="127.0.0.1")
    env = agentenv.apply(jail_env(dict(os.environ), config), agent_settings, config)
    if shutil.which(command[0], path=env.get("PATH")) is None:
        raise GoexError(f"cannot run {command[0]!r}: no such file or command")
    return JailedRun(config, agent, command, view, env, **popen)
