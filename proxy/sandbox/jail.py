"""Jailed commands: a network namespace whose only way out is a listener bridged, from outside, to the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import agentenv, audit
from .config import Config
from .errors import GoexError

#: Seconds the jail's first process may take to set up its namespace before the command is given up on.
SETUP_TIMEOUT = 10.0
_INIT = Path(__file__).with_name("jailinit.py")


class JailError(GoexError):
    """The namespace could not be made; the command was not run."""


class Jail:
    """Runs a command in its own network namespace. Inside, 127.0.0.1:`port` is the proxy: connections to it are
    accepted by a listener created in the namespace and passed out, and bridged here to `proxy` in the host's
    namespace. Nothing else inside the namespace reaches any network."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, proxy: tuple[str, int],
                 **popen: Any) -> None:
        """`popen`: more `subprocess.Popen` arguments for the command (stdin, stderr, start_new_session)."""
        self.proxy = proxy
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.child = subprocess.Popen([sys.executable, "-I", str(_INIT), str(theirs.fileno()), str(port), "--",
                                           *command], env=env, pass_fds=(theirs.fileno(),), **popen)
        finally:
            theirs.close()
        with ours:
            listener = self._receive_listener(ours)
        self._loop = asyncio.new_event_loop()
        self._server_ready = threading.Event()
        self._thread = threading.Thread(target=self._bridge, args=(listener,), name="goex-jail-bridge", daemon=True)
        self._thread.start()
        self._server_ready.wait(SETUP_TIMEOUT)

    def _receive_listener(self, channel: socket.socket) -> socket.socket:
        channel.settimeout(SETUP_TIMEOUT)
        try:
            message, fds, _, _ = socket.recv_fds(channel, 4096, 1)
        except (TimeoutError, OSError) as exc:
            self.child.kill()
            self.child.wait()
            raise JailError(f"the jail was not set up in time: {exc}") from None
        if message != b"ok" or len(fds) != 1:
            for fd in fds:
                socket.close(fd)
            self.child.wait()
            why = message.decode(errors="replace").removeprefix("error: ") or "its first process ended"
            raise JailError(f"cannot make a network namespace for the jail: {why} (user namespaces may be disabled: "
                            "see `sysctl kernel.unprivileged_userns_clone` and `user.max_user_namespaces`, or run as "
                            "root); the command was not run")
        return socket.socket(fileno=fds[0])

    def _bridge(self, listener: socket.socket) -> None:
        async def serve() -> None:
            server = await asyncio.start_server(self._connect, sock=listener)
            self._server_ready.set()
            async with server:
                await server.serve_forever()

        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(serve())
        except asyncio.CancelledError:
            pass
        finally:
            self._server_ready.set()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.proxy)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()

    def wait(self) -> int:
        """The command's exit status (negative: the signal that ended it), once it has ended."""
        try:
            return self.child.wait()
        finally:
            self.close()

    def close(self) -> None:
        """Stop bridging (connections still open are cut)."""
        def cancel_all() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(cancel_all)
            self._thread.join(5)


@contextlib.contextmanager
def proxy_for_jail(config: Config) -> Iterator[Config]:
    """The config a jail is bridged with: the running proxy's, or that of a proxy started here until the block ends."""
    agentenv.check_ca(config)
    if agentenv.listening(config):
        yield config
        return
    from .policyload import load_policy_set  # mitmproxy and CEL: a quarter second, only paid without a proxy
    from .runtime import InProcessProxy

    audit.open_db(config.audit_db).close()
    in_process = InProcessProxy(config, load_policy_set([(p.path, p.agents) for p in config.policies]))
    try:
        yield in_process.config
    finally:
        in_process.close()


def start_jailed(config: Config, agent: str, command: list[str], **popen: Any) -> Jail:
    """COMMAND started in a jail with the agent's proxy settings (from `proxy_for_jail`'s config)."""
    env = agentenv.apply(dict(os.environ), agentenv.agent_env(config, agent, proxy_host="127.0.0.1"), config)
    if shutil.which(command[0], path=env.get("PATH")) is None:
        raise GoexError(f"cannot run {command[0]!r}: no such file or command")
    return Jail(command, env, config.listen_port, agentenv.proxy_address(config), **popen)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until it ends, then half-close it; a broken side closes the whole connection."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:  # a reset or broken pipe on either side
        writer.close()
