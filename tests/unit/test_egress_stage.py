"""The egress stage on mitmproxy test flows: an upstream given as an address is checked at once (the request's hook
does not wait for a look-up it does not need), and refused as a name resolving to it would be."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mitmproxy.test import taddons, tflow

from goex_proxy.addons import flowmeta
from goex_proxy.addons.egress import Egress
from tests.conftest import stage_state

POLICY = """
version: 1
name: p
rules:
  - name: read anything
    allow: {host: "*", methods: [GET], path: "/**"}
"""


@pytest.fixture
def state(tmp_path: Path):
    with stage_state(tmp_path, POLICY) as s:
        yield s


def get(host: str, port: int = 80):
    f = tflow.tflow()
    f.request.host, f.request.port = host, port
    flowmeta.set_agent(f, "bot")
    return f


@pytest.mark.parametrize("host", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_a_public_address_is_checked_at_once_and_pinned(state, host: str) -> None:
    with taddons.context():
        f = get(host)
        assert Egress(state).request(f) is None  # nothing to wait for
        assert f.response is None
        # pinned as a looked-up name would be: the connection goes to the address checked
        assert [str(a) for a in asyncio.run(state.pins.addresses(state.config.egress, None, host, 80))] == [host]


@pytest.mark.parametrize(("host", "why"), [("127.0.0.1", "a loopback address"),
                                           ("169.254.169.254", "a cloud metadata address"),
                                           ("10.0.0.1", "a private network address"), ("::1", "a loopback address")])
def test_a_private_address_is_refused_at_once(state, host: str, why: str) -> None:
    with taddons.context():
        f = get(host)
        assert Egress(state).request(f) is None
        assert f.response is not None and f.response.status_code == 403
        body = json.loads(f.response.content)
        assert body["rule"] == "upstream.block_private_networks" and why in body["reason"], body


def test_a_name_is_looked_up_and_the_hook_waits_for_it(state) -> None:
    with taddons.context():
        f = get("example.invalid")
        pending = Egress(state).request(f)
        assert asyncio.iscoroutine(pending)
        pending.close()
