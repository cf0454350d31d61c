"""The in-process proxy (`undo`, `exec --jail` without `run`) when the port it chose is taken before it binds it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests

from goex_proxy import runtime
from goex_proxy.config import Agent, Config
from goex_proxy.policy.engine import PolicySet
from goex_proxy.policy.load import check_policy_text
from goex_proxy.secretref import SecretRef
from tests.conftest import LoopbackServer

POLICY = "version: 1\nname: p\nrules: []\n"


def _config(tmp_path: Path) -> Config:
    return Config(file=tmp_path / "config.yaml", state_dir=tmp_path, audit_db=tmp_path / "audit.db",
                  agents={"bot": Agent("bot", SecretRef(inline="bot-token-4242"))})


def _policies() -> PolicySet:
    policy, problems = check_policy_text(POLICY, "p.yaml")
    assert policy is not None, problems
    return PolicySet.of([policy])


def squatter() -> LoopbackServer:
    """Another process's listener on a loopback port: it answers every connection with its own name."""
    def answer(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nsquatter")
    return LoopbackServer(answer)


def test_a_port_taken_between_choosing_and_binding_is_left_for_another(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    taken = squatter()
    chosen = iter([taken.port, taken.port])
    real = runtime._free_loopback_port
    monkeypatch.setattr(runtime, "_free_loopback_port", lambda: next(chosen, None) or real())
    proxy = runtime.InProcessProxy(_config(tmp_path), _policies())
    try:
        assert proxy.port != taken.port
        # The proxy that answers is goex-proxy (an unknown agent is refused with 407), not the squatter.
        r = requests.get("http://example.invalid/", proxies={"http": f"http://127.0.0.1:{proxy.port}"}, timeout=10)
        assert r.status_code == 407 and b"squatter" not in r.content
    finally:
        proxy.close()
        taken.close()


def test_a_port_never_free_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = squatter()
    monkeypatch.setattr(runtime, "_free_loopback_port", lambda: taken.port)
    try:
        with pytest.raises(RuntimeError, match="port taken 5 times"):
            runtime.InProcessProxy(_config(tmp_path), _policies())
    finally:
        taken.close()
