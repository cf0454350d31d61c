"""Which credential a request gets, looked up by host: the same answer as asking every credential in the config's
order, and every credential's secret still scrubbed from every answer, whichever host it comes from."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.test import taddons, tflow

from goex_proxy.addons import flowmeta
from goex_proxy.addons.inject import Inject
from goex_proxy.addons.scrub import Scrub
from goex_proxy.credentials.binding import Bindings
from goex_proxy.credentials.kinds import Credential, Injection
from goex_proxy.globs import compile_host, compile_path
from goex_proxy.secretref import SecretRef
from tests.conftest import READ_PATH_POLICY, stage_state

HOSTS = ["a.example", "b.example", "x.a.example", "y.b.example", "address", "c.example"]
HOST_GLOBS = [*HOSTS, "*.a.example", "**.example", "*.example", "{a,c}.example", "addr?ss"]
PATHS = ["/", "/v1/items", "/v1/items/7", "/admin"]
PATH_GLOBS = ["/v1/**", "/v1/items/*", "/admin", "/**"]


def credential(i: int, hosts: list[str], methods: list[str] | None, paths: list[str] | None) -> Credential:
    return Credential(f"c{i}", SecretRef(inline=f"secret-{i}"), tuple(compile_host(h) for h in hosts),
                      Injection("header"), frozenset(methods) if methods is not None else None,
                      tuple(compile_path(p) for p in paths) if paths is not None else None)


credentials = st.lists(st.tuples(st.lists(st.sampled_from(HOST_GLOBS), min_size=1, max_size=3),
                                 st.none() | st.lists(st.sampled_from(["GET", "POST", "DELETE"]), max_size=2),
                                 st.none() | st.lists(st.sampled_from(PATH_GLOBS), min_size=1, max_size=2)),
                       max_size=8)


@settings(max_examples=300, deadline=None)
@given(credentials, st.sampled_from(HOSTS), st.sampled_from(["GET", "POST", "DELETE"]), st.sampled_from(PATHS))
def test_the_index_answers_as_the_config_order_does(specs, host, method, path) -> None:
    """Literal hosts and host globs mixed, a host named by several credentials, methods and paths restricting them:
    the credential found is the first in the config that binds the request, as trying each in turn finds."""
    made = [credential(i, *spec) for i, spec in enumerate(specs)]
    expected = next((c for c in made if c.binds(host, method, path)), None)
    assert Bindings(made).first(host, method, path) is expected


def test_a_host_glob_earlier_in_the_config_wins_over_a_literal_host_later() -> None:
    made = [credential(0, ["*.example"], None, None), credential(1, ["a.example"], None, None),
            credential(2, ["a.example"], None, None)]
    assert Bindings(made).first("a.example", "GET", "/").name == "c0"
    assert Bindings(made[1:]).first("a.example", "GET", "/").name == "c1"
    assert Bindings(made[1:]).first("b.example", "GET", "/") is None




def test_secrets_of_credentials_bound_elsewhere_are_scrubbed_from_the_answer(tmp_path: Path) -> None:
    """Only the credential bound to the request's host is injected (the others are not even asked), yet an upstream
    that echoes the secrets of all of them, bound to other hosts, shows the agent only their placeholders."""
    others = {f"far{i}": f"far-secret-{i}-7d1e0c4b9a" for i in range(50)}
    with stage_state(tmp_path, READ_PATH_POLICY) as state:
        made = {name: Credential(name, SecretRef(inline=value), (compile_host(f"{name}.elsewhere.example"),),
                                 Injection("header"), schemes=frozenset({"http", "https"}))
                for name, value in others.items()}
        made["here"] = Credential("here", SecretRef(inline="here-secret-5b2f8e1d03"), (compile_host("address"),),
                                  Injection("header"), schemes=frozenset({"http", "https"}))
        state.config = dataclasses.replace(state.config, credentials=made)
        state.load_secrets()
        f = tflow.tflow()  # GET http://address:22/path
        flowmeta.set_path(f, "/path")
        with taddons.context():
            pending = Inject(state).request(f)
            assert pending is not None
            asyncio.run(pending)
            assert f.request.headers["Authorization"] == "Bearer here-secret-5b2f8e1d03"
            assert flowmeta.credential(f) == "here"
            f.response = tflow.tresp(content=" ".join([*others.values(), "here-secret-5b2f8e1d03"]).encode())
            f.response.headers["X-Echo"] = others["far7"]
            Scrub(state).response(f)
    shown = f.response.content + b"".join(v for _, v in f.response.headers.fields)
    assert b"secret" not in shown
    for name in [*others, "here"]:
        assert f"goex-placeholder-{name}".encode() in shown
