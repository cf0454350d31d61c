"""A secret is never injected into a header value it would break: one holding CR, LF or NUL is refused, not sent."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from mitmproxy import http

from goex_proxy.addons.inject import CannotInject, inject_into
from goex_proxy.addons.state import ProxyState
from goex_proxy.config import load_config

CONFIG = """
    version: 1
    credentials:
      header: {secret: h, hosts: [h.example], inject: {header: Authorization, value: "token {secret}"}}
"""


@pytest.mark.parametrize("secret", ["tok\r\nX-Evil: 1", "tok\nX-Evil: 1", "tok\x00"])
def test_a_secret_holding_a_line_break_is_refused_not_injected(tmp_path: Path, secret: str) -> None:
    """`secrets set` keeps a value with line breaks inside (and an environment variable or a token endpoint can give
    one): mitmproxy wrote it as it was, so the request went upstream with a header line of the secret's making."""
    (tmp_path / "config.yaml").write_text(textwrap.dedent(CONFIG))
    state = ProxyState()
    state.config = load_config(tmp_path / "config.yaml")
    state.secrets = {"header": secret}
    request = http.Request.make("GET", "https://h.example/x", b"", {"Authorization": "token goex-placeholder-header"})
    with pytest.raises(CannotInject, match="holds a CR, LF or NUL") as refused:
        asyncio.run(inject_into(state, request, state.config.credentials["header"]))
    assert "tok" not in str(refused.value)  # the reason the agent is given names no part of the secret
    assert request.headers["Authorization"] == "token goex-placeholder-header"


def test_an_ordinary_value_is_sent_as_it_is() -> None:
    from goex_proxy.addons.inject import field_value

    assert field_value("Bearer abc.DEF-123_~+/=") == "Bearer abc.DEF-123_~+/="
