"""What the benchmarks read back from a proxy's audit log: rows as the proxy writes them now (ids packed, the URL
left to its parts), found as `layout` finds them, and the console's page queries as `console.data` builds them."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

from goex_proxy.approvals import store as approvals
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.ids import RequestIds
from tests.unit.test_audit_storage import intent, outcome

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(autouse=True)
def _sys_path_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/ and what its modules add to sys.path leave with each test: the jail takes every directory on it for
    part of goex-proxy's Python environment (tests/unit/test_sandbox_view.py, in the same worker, saw the
    repository as one)."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def bench_module(name: str) -> Any:
    """A module of bench/ (which imports its siblings by their bare names)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_the_review_bench_finds_the_review_queue_by_url(tmp_path: Path) -> None:
    """review_bench checks that each POST was queued for review by its row's URL. It joined `approvals` to
    `requests` on the id in SQL: a row holds its id as 8 bytes (migration 23), so no entry found its row and the
    bench stopped with "did not queue both POSTs"; and the URL a row leaves to its parts read as b""."""
    ids = RequestIds()
    vendor = intent(ids, 1, scheme="http", port=80, path="/api/chat.postMessage",
                    url="http://slack.com/api/chat.postMessage")
    rest = intent(ids, 2, scheme="http", host="127.0.0.1", port=8080, path="/bench/items",
                  url="http://127.0.0.1:8080/bench/items")
    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path))
    try:
        for i, (row, undo_class) in enumerate(((vendor, "exact"), (rest, "needs-preimage"))):
            writer.record_intent(row).result(5)
            writer.record_outcome(str(row["id"]), outcome(i)).result(5)
            entry = {"request_id": row["id"], "ts": row["ts"], "agent": row["agent"], "kind": "review",
                     "state": approvals.PASSED, "undo_class": undo_class, "why": "review: pass", "owner": "bench"}
            writer.apply(lambda conn, _, entry=entry: approvals.insert(conn, entry)).result(5)
    finally:
        writer.close()
    queued = bench_module("review_bench")._queued(tmp_path / "audit.db")
    assert queued == {"http://slack.com/api/chat.postMessage": "exact (passed)",
                      "http://127.0.0.1:8080/bench/items": "needs-preimage (passed)"}



def test_the_console_bench_explains_the_page_query_the_console_runs(tmp_path: Path) -> None:
    """console_bench reports the plan of each filter's page query. It called `Filters.where()` without the connection
    it takes since migration 20 (TypeError: the bench ended after timing every page), and explained an order by seq,
    where a page is ordered by ts then seq (data.page): a plan of a query the console never runs."""
    ids = RequestIds()
    rows = [(intent(ids, i, decision="deny" if i % 2 else "allow", agent="mailbot"), outcome(i)) for i in range(4)]
    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path))
    try:
        for row, done in rows:
            writer.record_intent(row).result(5)
            writer.record_outcome(str(row["id"]), done).result(5)
    finally:
        writer.close()
    console_bench = bench_module("console_bench")
    plans = console_bench._plans(tmp_path / "audit.db")
    assert set(plans) == {name for name, _ in console_bench._filters()}
    assert "idx_requests_decision" in plans["decision=deny"], plans
    assert "USING INTEGER PRIMARY KEY" in plans["unfiltered"], plans  # the newest block of seqs (`times`)
