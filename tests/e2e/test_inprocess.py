"""The in-process proxy (`undo`, `exec --jail` without `run`) when the port it chose is taken before it binds it."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import requests

from goex_proxy import runtime
from goex_proxy.config import Agent, Config
from goex_proxy.policy.engine import PolicySet
from goex_proxy.policy.load import check_policy_text
from goex_proxy.secretref import SecretRef

POLICY = "version: 1\nname: p\nrules: []\n"


def _config(tmp_path: Path) -> Config:
    return Config(file=tmp_path / "config.yaml", state_dir=tmp_path, audit_db=tmp_path / "audit.db",
                  agents={"bot": Agent("bot", SecretRef(inline="bot-token-4242"))})


def _policies() -> PolicySet:
    policy, problems = check_policy_text(POLICY, "p.yaml")
    assert policy is not None, problems
    return PolicySet.of([policy])


class Squatter:
    """Another process's listener on a loopback port: it accepts and answers every connection with its own name."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nsquatter")

    def close(self) -> None:
        self.sock.close()


def test_a_port_taken_between_choosing_and_binding_is_left_for_another(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    squatter = Squatter()
    chosen = iter([squatter.port, squatter.port])
    real = runtime._free_loopback_port
    monkeypatch.setattr(runtime, "_free_loopback_port", lambda: next(chosen, None) or real())
    proxy = runtime.InProcessProxy(_config(tmp_path), _policies())
    try:
        assert proxy.port != squatter.port
        # The proxy that answers is goex-proxy (an unknown agent is refused with 407), not the squatter.
        r = requests.get("http://example.invalid/", proxies={"http": f"http://127.0.0.1:{proxy.port}"}, timeout=10)
        assert r.status_code == 407 and b"squatter" not in r.content
    finally:
        proxy.close()
        squatter.close()


def test_a_port_never_free_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squatter = Squatter()
    monkeypatch.setattr(runtime, "_free_loopback_port", lambda: squatter.port)
    try:
        with pytest.raises(RuntimeError, match="port taken 5 times"):
            runtime.InProcessProxy(_config(tmp_path), _policies())
    finally:
        squatter.close()
