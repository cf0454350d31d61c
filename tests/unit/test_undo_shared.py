"""A mutating request is read for undo once: the gate's Exchange (classified before sending, for `review:`) gives
the outcome row's class its request variables, and the class recorded is the one a fresh reading gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import taddons, tflow

from goex_proxy.addons import flowmeta, rows
from goex_proxy.addons.gate import Gate
from goex_proxy.policy.engine import Decision
from goex_proxy.presets import undo_dir
from goex_proxy.undo import plan
from goex_proxy.undo.plan import Exchange, classify
from goex_proxy.undo.rules import load_packs
from tests.conftest import stage_state

POLICY = """version: 1
name: p
review: {exact: pass, needs-preimage: pass, lossy: pass, irreversible: pass}
rules:
  - name: write
    allow: {host: address, methods: [POST, PUT], path: /items/**}
"""
ITEM = json.dumps({"name": "widget", "count": 2}).encode()


@pytest.fixture
def state(tmp_path: Path):  # type: ignore[no-untyped-def]
    with stage_state(tmp_path, POLICY) as s:
        s.undo_rules = load_packs([undo_dir() / "rest.yaml"])
        yield s


def _answered(state: Any, method: str, status: int, answer: dict[str, Any]) -> Any:
    """A request that passed the gate under `review:`, recorded, then answered."""
    f = tflow.tflow()
    f.request.method, f.request.path, f.request.content = method, "/items", ITEM
    f.request.headers["Content-Type"] = "application/json"
    flowmeta.set_agent(f, "bot")
    flowmeta.set_decision(f, Decision("allow", "allowed", "p/write"))
    with taddons.context():
        waits = Gate(state).request(f)
    assert waits is None  # nothing to wait for
    assert flowmeta.review(f) is not None and f.response is None  # classified, passed, not held
    rows.request_row(state, f)
    f.response = tflow.tresp(status_code=status, content=json.dumps(answer).encode())
    f.response.headers["Content-Type"] = "application/json"
    return f


@pytest.mark.parametrize(("method", "status", "answer", "expected"), [
    ("POST", 201, {"id": 7, "name": "widget"}, "exact"),
    ("POST", 200, {"id": 8}, "exact"),
    ("POST", 500, {"error": "no"}, "no rule"),
    ("PUT", 200, {"name": "widget"}, "needs-preimage"),  # no pre-image was read: undo will say it needs one
])
def test_the_recorded_class_is_a_fresh_readings_and_the_request_is_read_once(
        state: Any, monkeypatch: pytest.MonkeyPatch, method: str, status: int, answer: dict[str, Any],
        expected: str) -> None:
    reads: list[bytes | None] = []
    real = plan.message_view

    def counted(headers: Any, body: bytes | None, *fields: Any) -> dict[str, Any]:
        reads.append(body)
        return real(headers, body, *fields)

    monkeypatch.setattr(plan, "message_view", counted)
    f = _answered(state, method, status, answer)
    kept = flowmeta.exchange(f)
    assert kept is not None and not f.metadata  # kept beside the flow: it holds the injected credential
    before = reads.count(ITEM)
    recorded = rows.undo_class(state, f, f.response)
    read_once = reads.count(ITEM)
    req, resp = f.request, f.response
    fresh = classify(state.undo_rules, Exchange(req.method, flowmeta.url(f), rows.header_pairs(req.headers), ITEM,
                                                resp.status_code, rows.header_pairs(resp.headers), resp.content))
    assert recorded == fresh == expected
    assert read_once == 1  # by the gate (if a rule's `when` needed it before the answer) or else by the row
    assert before == (1 if method == "PUT" else 0)  # the PUT rules' `when`s read the request before it is sent
    assert kept.request_variables()["json"] == {"name": "widget", "count": 2}


def test_a_request_changed_after_the_gate_is_read_again(state: Any) -> None:
    f = _answered(state, "POST", 201, {"id": 7})
    kept = flowmeta.exchange(f)
    assert kept is not None and not f.metadata  # kept beside the flow: it holds the injected credential
    f.request.content = json.dumps({"name": "other"}).encode()  # a later stage rewrote the body
    later = Exchange("POST", kept.url, kept.request_headers, f.request.content, 201)
    assert kept.answered(later) is later and "_request_variables" not in later.__dict__
    assert later.request_variables()["json"] == {"name": "other"}
    assert rows.undo_class(state, f, f.response) == "exact"
