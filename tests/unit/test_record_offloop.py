"""The record stage builds the rows of large exchanges in a worker thread: the rows are the ones the event loop
builds, the event loop's thread does not build them, and the request row is committed before the hook returns."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import taddons, tflow

from goex_proxy.addons import flowmeta, record, rows
from goex_proxy.addons.record import Record
from goex_proxy.audit import store as audit
from goex_proxy.ids import packed
from goex_proxy.policy.engine import Decision
from goex_proxy.presets import undo_dir
from goex_proxy.undo.rules import load_packs
from tests.conftest import stage_state

POLICY = """version: 1
name: p
rules:
  - name: write
    allow: {host: address, methods: [POST], path: /items}
"""
COLUMNS = ("req_body_size", "req_body_sha256", "status", "resp_body_size", "resp_body_sha256", "undo_class", "error")


@pytest.fixture
def state(tmp_path: Path):  # type: ignore[no-untyped-def]
    with stage_state(tmp_path, POLICY) as s:
        s.undo_rules = load_packs([undo_dir() / "rest.yaml"])
        yield s


def _exchange(state: Any, body: bytes, answer: bytes) -> tuple[dict[str, Any], set[str]]:
    """One POST through the record stage (request, then response); its stored row, and the threads rows were built on."""
    threads: set[str] = set()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("request_row", "outcome"):
            real = getattr(rows, name)

            def spy(*args: Any, real: Any = real) -> Any:
                threads.add(threading.current_thread().name)
                return real(*args)

            patch.setattr(rows, name, spy)
        f = tflow.tflow()
        f.request.method, f.request.path, f.request.content = "POST", "/items", body
        f.request.headers["Content-Type"] = "application/json"
        flowmeta.set_agent(f, "bot")
        flowmeta.set_decision(f, Decision("allow", "allowed", "p/write"))
        stage = Record(state)
        with taddons.context():
            asyncio.run(stage.request(f))
            committed = sqlite3.connect(state.config.audit_db).execute(
                "SELECT count(*) FROM requests WHERE id = ?", (packed(flowmeta.request_id(f)),)).fetchone()[0]
            assert committed == 1  # the request row is in before the request may go on
            f.response = tflow.tresp(status_code=201, content=answer)
            f.response.headers["Content-Type"] = "application/json"
            pending = stage.response(f)  # a coroutine only for a large exchange (mitmproxy awaits it)
            assert (pending is not None) is record.large(f.request, f.response)
            if pending is not None:
                asyncio.run(pending)
    state.writer.apply(lambda conn, writer: None).result(timeout=10)  # the outcome was queued before this
    conn = audit.connect(state.config, readonly=True)
    try:
        row = audit.get(conn, flowmeta.request_id(f))
    finally:
        conn.close()
    return {column: row[column] for column in COLUMNS}, threads


@pytest.mark.parametrize("size", [1_000, record.OFF_LOOP_BYTES + 1])
def test_a_row_is_the_same_on_the_loop_or_off_it(state: Any, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    body = json.dumps({"name": "widget", "data": "x" * size}).encode()
    answer = json.dumps({"id": 7, "data": "y" * size}).encode()
    off, threads_off = _exchange(state, body, answer)
    off_loop = size > record.OFF_LOOP_BYTES
    monkeypatch.setattr(record, "OFF_LOOP_BYTES", 1 << 40)  # everything on the loop, as before
    on, threads_on = _exchange(state, body, answer)
    assert off == on
    assert off["req_body_sha256"] == hashlib.sha256(body).hexdigest() and off["req_body_size"] == len(body)
    assert off["resp_body_sha256"] == hashlib.sha256(answer).hexdigest() and off["undo_class"] == "exact"
    main = threading.main_thread().name
    assert threads_on == {main}
    assert (main not in threads_off and len(threads_off) >= 1) if off_loop else threads_off == {main}


def test_an_undo_class_that_cannot_be_worked_out_leaves_the_outcome_recorded(state: Any,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The record stage marks a flow recorded before it builds its outcome: anything raised while working out the
    undo class (an answer no rule expected; two such were found, and fixed) lost the outcome, and the row read as in
    flight, then `interrupted`, while the agent had its answer. The outcome is kept, its class saying why undo plans
    nothing from it."""
    def broken(*_: Any) -> str:
        raise RuntimeError("an undo rule raised")

    monkeypatch.setattr(rows, "classify", broken)
    row, _ = _exchange(state, b'{"name": "n"}', b'{"id": 7}')
    assert row["status"] == 201 and row["error"] is None
    assert row["undo_class"] == f"{rows.UNCLASSIFIED} (RuntimeError)"  # not its message: it may quote the answer
