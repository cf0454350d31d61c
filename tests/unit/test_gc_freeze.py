"""`run` moves what it made to start out of the cyclic collector's sight before it serves
(`runtime._freeze_what_starting_made`)."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from pathlib import Path
from typing import Any

from goex_proxy.runtime import _freeze_what_starting_made


def test_what_starting_made_is_frozen_and_its_garbage_first_collected() -> None:
    """What is alive is frozen; a cycle left over from starting is collected first, not frozen with the rest."""
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    gc.unfreeze()
    gc.disable()  # no collection but the freeze's
    try:
        left = weakref.ref(Cycle())  # garbage only a collection finds
        _freeze_what_starting_made()
        assert gc.get_freeze_count() > 10_000  # mitmproxy's and this test process's objects
        assert left() is None
    finally:
        gc.enable()
        gc.unfreeze()


def test_connections_a_worker_accepts_as_it_starts_are_not_frozen(tmp_path: Path, monkeypatch: Any) -> None:
    """A worker's listening socket is made by the first process before the worker starts (and stays open while a dead
    worker is started again), so agents' connections wait in its backlog and are accepted as soon as mitmproxy serves,
    before its `running` hook. Frozen with what starting made, their objects (which hold cycles) were never collected
    once they closed: every connection waiting when a worker came up stayed in memory for as long as it ran."""
    import signal
    import socket

    from goex_proxy import runtime
    from goex_proxy.config import load_config
    from goex_proxy.policy.engine import PolicySet
    from goex_proxy.workers import SharedPortLoop, listen_sockets
    from tests.conftest import free_port

    port = free_port()
    (tmp_path / "config.yaml").write_text(f"version: 1\nlisten: 127.0.0.1:{port}\nstate_dir: {tmp_path / 'state'}\n",
                                          encoding="utf-8")
    config = load_config(tmp_path / "config.yaml")
    sock = listen_sockets("127.0.0.1", port, 1)[0]
    waiting = []
    for _ in range(5):  # connected and asked before the worker serves: in the socket's backlog
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        waiting.append(client)
    accepted: list[weakref.ref[Any]] = []
    answers: list[bytes] = []

    class Watch:
        def client_connected(self, client: Any) -> None:
            accepted.append(weakref.ref(client))

    built = runtime.build_master

    def build_watched(*args: Any, **kwargs: Any) -> Any:
        m = built(*args, **kwargs)
        m.addons.add(Watch())
        return m

    monkeypatch.setattr(runtime, "build_master", build_watched)

    async def main() -> None:
        async def answered_then_stop() -> list[bytes]:
            try:
                for client in waiting:
                    client.settimeout(10)
                    answers.append(await asyncio.to_thread(client.recv, 100))
                    client.close()
                await asyncio.sleep(0.5)  # the connections' ends handled
            finally:
                os.kill(os.getpid(), signal.SIGTERM)
            return answers

        stopping = asyncio.get_running_loop().create_task(answered_then_stop())
        await runtime.serve(config, PolicySet(), quiet=True, worker=1, sockets=[sock])
        await stopping

    gc.unfreeze()
    try:
        with asyncio.Runner(loop_factory=lambda: SharedPortLoop(port, sock)) as runner:
            runner.run(main())
        assert all(a.startswith(b"HTTP/1.1 407") for a in answers) and len(answers) == 5, answers  # no agent named
        assert gc.get_freeze_count() > 10_000  # what starting made is frozen
        gc.collect()
        assert len(accepted) == len(waiting)
        assert [ref for ref in accepted if ref() is not None] == []  # each connection's objects collected
    finally:
        gc.unfreeze()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # serve ignores both once it has stopped
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sock.close()
        for client in waiting:
            client.close()
