"""The decide stage on large bodies: read in the body thread, decided as of when it is decided, parsed once however
many ways the request is read, and conditions given no more of it than the engine converts quickly."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from mitmproxy.test import taddons, tflow

from goex_proxy.addons import decide as decide_module
from goex_proxy.addons import flowmeta
from goex_proxy.addons.decide import BODY_OFF_LOOP, Decide
from goex_proxy.policy import cel, requestview
from tests.conftest import stage_state
from tests.hookrun import finished

POLICY = """
version: 1
name: p
rules:
  - name: small batches
    allow: {host: address, methods: [POST], path: "/batch/**", when: 'size(request.json.items) <= 10'}
  - name: any json
    allow: {host: address, methods: [POST], path: "/any/**", when: 'request.json.kind == "note"'}
  - name: once a second
    allow: {host: address, methods: [POST], path: /once, limit: {count: 1, per: 1s}}
"""


@pytest.fixture
def state(tmp_path: Path):
    with stage_state(tmp_path, POLICY) as s:
        yield s


def post(path: str, body: bytes, content_type: str = "application/json"):
    f = tflow.tflow()
    f.request.method = "POST"
    f.request.path = path
    f.request.headers["Content-Type"] = content_type
    f.request.raw_content = body
    flowmeta.set_agent(f, "bot")
    return f


def status(f) -> int | None:
    return f.response.status_code if f.response is not None else None


def test_a_large_body_is_decided_in_the_body_thread_as_a_small_one_is(state):
    small = {"kind": "note", "pad": "x"}
    large = {"kind": "note", "pad": "x" * BODY_OFF_LOOP}
    with taddons.context():
        for doc in (small, large):
            f = post("/any/1", json.dumps(doc).encode())
            result = Decide(state).request(f)
            assert asyncio.iscoroutine(result) == (doc is large)
            finished(result)
            assert status(f) is None and flowmeta.decision(f).effect == "allow"
        f = post("/any/1", json.dumps({**large, "kind": "other"}).encode())
        finished(Decide(state).request(f))
        assert status(f) == 403


def test_a_condition_reading_more_than_the_engine_is_given_denies_with_why(state):
    with taddons.context():
        f = post("/batch/1", json.dumps({"items": [1] * 5}).encode())
        finished(Decide(state).request(f))
        assert status(f) is None
        f = post("/batch/1", json.dumps({"items": [[] for _ in range(cel.MOST_CONTAINERS + 1)]}).encode())
        finished(Decide(state).request(f))
        assert status(f) == 403
        reason = json.loads(f.response.content)["reason"]
        assert "could not be evaluated" in reason and f"{cel.MOST_CONTAINERS:,} objects and arrays" in reason
        f = post("/batch/1", json.dumps({"items": [0] * (cel.MOST_VALUES + 1)}).encode())
        finished(Decide(state).request(f))
        assert status(f) == 403


def test_the_body_is_parsed_once_however_many_ways_the_path_is_read(state, monkeypatch):
    """A path with %2F is decided as routers read it too: each reading shares the body the first one parsed (it
    was parsed again on the event loop for each, after the body thread had parsed it)."""
    parses = []
    real = requestview.json_loads
    monkeypatch.setattr(requestview, "json_loads", lambda *a, **k: parses.append(1) or real(*a, **k))
    body = json.dumps({"kind": "note", "pad": "x" * BODY_OFF_LOOP}).encode()
    with taddons.context():
        for path in ("/any/a%2Fb", "/any/a%252Fb", "/any/x.json"):
            parses.clear()
            f = post(path, body)
            finished(Decide(state).request(f))
            assert status(f) is None, (path, f.response and f.response.content)
            assert len(parses) == 1, path


def test_a_body_that_waited_in_the_thread_is_counted_when_it_is_decided(state, monkeypatch):
    """Counted as of when it came, a body that waited longer than a limit's window was charged in a window that
    had moved on: the next request saw its hit as gone, and two went through in a second that allows one."""
    slow = decide_module.policy_view

    def waiting(*args, **kwargs):
        time.sleep(1.2)  # behind other bodies in the thread
        return slow(*args, **kwargs)

    monkeypatch.setattr(decide_module, "policy_view", waiting)
    with taddons.context():
        first = post("/once", b"x" * BODY_OFF_LOOP, "application/octet-stream")
        finished(Decide(state).request(first))
        assert status(first) is None
        second = post("/once", b"{}")
        finished(Decide(state).request(second))
        assert status(second) == 403, "two went through in one second"
        assert "limit reached" in json.loads(second.response.content)["reason"]
