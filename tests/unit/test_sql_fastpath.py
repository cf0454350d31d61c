"""The gateway's fast path: which messages only read, decisions kept only while the policies that made them are in
force, reads' rows queued in order with the writes', and the per-agent connection cap's config."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from goex_proxy.audit import store as audit
from goex_proxy.audit import writer as audit_writer
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.db import fastpath
from goex_proxy.db.fastpath import DecisionCache, QueuedReads, only_reads, parse_statements
from goex_proxy.errors import AuditError, ConfigError
from goex_proxy.ids import RequestIds
from goex_proxy.policy import sql
from goex_proxy.policy.sqlparse import parse
from tests.unit.test_sql_dbconfig import SHOP, config
from tests.unit.test_sql_rules import POLICY, policies

SELECT = "SELECT qty FROM orders WHERE id = 1"


@pytest.mark.parametrize(("text", "reads"), [
    (SELECT, True),
    ("SELECT 1; SELECT count(*) FROM orders", True),
    ("SHOW search_path", True),
    ("SELECT qty FROM orders WHERE id = 1 FOR UPDATE", False),        # locks rows: an update
    ("WITH gone AS (DELETE FROM orders RETURNING id) SELECT * FROM gone", False),
    ("SELECT * INTO copy_of_orders FROM orders", False),               # makes a table
    ("SELECT nextval('orders_id_seq')", False),                        # a function that writes
    ("SELECT pg_sleep(1) FROM orders", False),                         # any function beyond the safe ones
    ("SELECT 1; UPDATE orders SET qty = 1 WHERE id = 1", False),       # one write makes the message a write
    ("BEGIN", False),
    ("", False),                                                       # nothing to record
])
def test_only_plain_selects_are_reads(text: str, reads: bool) -> None:
    assert only_reads(parse(text)) is reads


def test_a_kept_decision_is_the_one_the_policies_in_force_make() -> None:
    cache, shop = DecisionCache(), policies()
    first = cache.decide(shop, "shop", "bot", SELECT, parse(SELECT))
    assert first.effect == "allow" and cache.decide(shop, "shop", "bot", SELECT, parse(SELECT)) is first  # kept
    assert cache.decide(shop, "shop", "eve", SELECT, parse(SELECT)).effect == "deny"   # another agent: its own
    assert cache.decide(shop, "crm", "bot", SELECT, parse(SELECT)).effect == "deny"    # another database: its own
    edited = policies(POLICY.replace("tables: [orders, public.customers]", "tables: [public.customers]"))
    assert cache.decide(edited, "shop", "bot", SELECT, parse(SELECT)).effect == "deny"  # a new set: decided again
    assert cache.decide(shop, "shop", "bot", SELECT, parse(SELECT)) is not first        # and the old one forgotten


def test_decisions_are_not_kept_when_a_rule_reads_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clocked = policies(POLICY.replace("tables: [orders, public.customers]}",
                                      "tables: [orders, public.customers], when: 'now < 1000.0'}"))
    cache = DecisionCache()
    monkeypatch.setattr(sql.time, "time", lambda: 500.0)
    assert cache.decide(clocked, "shop", "bot", SELECT, parse(SELECT)).effect == "allow"
    monkeypatch.setattr(sql.time, "time", lambda: 1500.0)
    assert cache.decide(clocked, "shop", "bot", SELECT, parse(SELECT)).effect == "deny"


def test_the_cache_is_bounded() -> None:
    cache, shop = DecisionCache(size=3), policies()
    texts = [f"SELECT qty FROM orders WHERE id = {i}" for i in range(5)]
    for text in texts:
        cache.decide(shop, "shop", "bot", text, parse(text))
    assert [key[2] for key in cache._entries] == texts[2:]


def test_long_sql_is_parsed_off_the_event_loop_and_a_mistake_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []

    def parse_noting_thread(text: str):
        threads.append(threading.current_thread().name)
        return parse(text)

    monkeypatch.setattr(fastpath, "parse", parse_noting_thread)
    long = "SELECT " + ", ".join(["qty"] * 20_000) + " FROM orders"
    statements, error = asyncio.run(parse_statements(long))
    assert error is None and statements[0].tables == ("orders",)
    assert asyncio.run(parse_statements(SELECT))[1] is None
    assert threads[0] != threading.current_thread().name and threads[1] == threading.current_thread().name
    assert asyncio.run(parse_statements("SELEC 1"))[1].startswith("the statement does not parse")


def intent(ids: RequestIds, path: str) -> dict[str, object]:
    return {"id": ids.new(), "ts": time.time(), "agent": "bot", "method": "SELECT", "scheme": "postgresql",
            "host": "shop", "port": 5432, "path": path, "url": "postgresql://shop/shop", "req_headers": "[]",
            "decision": "allow"}


def test_a_write_is_committed_only_with_or_after_the_reads_queued_before_it(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_writer, "OUTCOME_GATHER_SECONDS", 0.5)  # the reads' rows wait for company long
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    reads = [intent(ids, f"/read{i}") for i in range(3)]
    queued = [writer.queue_intent(r) for r in reads]
    writer.record_outcome(str(reads[0]["id"]), {"status": 0, "ended": 1.0, "duration_ms": 1.0})
    write = intent(ids, "/write")
    writer.record_intent(write).result(5)   # a waited-for row ends the gathering, and comes after the reads
    assert all(f.done() and f.exception() is None for f in queued)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert [p for (p,) in conn.execute("SELECT path FROM requests ORDER BY seq")] == \
            ["/read0", "/read1", "/read2", "/write"]
        assert conn.execute("SELECT status FROM requests WHERE path = '/read0'").fetchone() == (0,)
    writer.close()


def test_a_reads_outcome_is_written_with_its_row_and_one_for_a_row_not_written_fails_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_writer, "OUTCOME_GATHER_SECONDS", 0.5)
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    updates: list[str] = []
    update = writer._update
    monkeypatch.setattr(writer, "_update", lambda op: (updates.append(op.id), update(op)))
    read = intent(ids, "/read")
    writer.queue_intent(read)
    done = writer.record_outcome(str(read["id"]), {"status": 0, "ended": 1.0, "duration_ms": 1.0})
    lost = writer.record_outcome("1M0000000000000", {"status": 0, "ended": 1.0, "duration_ms": 1.0})
    writer.record_intent(intent(ids, "/write")).result(5)  # in the same batch as the outcome of a row never written
    assert done.result(5) is None and updates == ["1M0000000000000"]  # the read's outcome went in with its row
    with pytest.raises(audit_writer.UnknownRequest):
        lost.result(5)
    writer.close()
    conn = audit.open_db(tmp_path / "a.db", readonly=True)
    assert conn.execute("SELECT path, status FROM requests ORDER BY seq").fetchall() == [("/read", 0), ("/write", None)]
    result = audit.verify(conn, audit.chain_key(conn, Seal(tmp_path)), Seal(tmp_path).anchor())
    assert result.broken_id is None and result.checked == 2


def test_a_read_whose_row_was_not_written_is_remembered() -> None:
    import concurrent.futures

    reads = QueuedReads()
    written: concurrent.futures.Future[str | None] = concurrent.futures.Future()
    lost: concurrent.futures.Future[str | None] = concurrent.futures.Future()
    reads.add(written)
    reads.add(lost)
    written.set_result(None)
    assert reads.failed is None
    lost.set_exception(AuditError("audit write failed: database is locked"))
    assert reads.failed == "audit write failed: database is locked"


def test_max_connections_defaults_to_ten_and_must_be_a_positive_number(tmp_path: Path) -> None:
    assert config(tmp_path, "databases:\n" + SHOP).databases.by_name["shop"].max_connections == 10
    assert config(tmp_path, "databases:\n" + SHOP + "    max_connections: 2\n").databases.by_name["shop"] \
        .max_connections == 2
    for bad in ("0", "-1", "many", "true"):
        with pytest.raises(ConfigError, match="'databases.shop.max_connections' must be a whole number of at least 1"):
            config(tmp_path, "databases:\n" + SHOP + f"    max_connections: {bad}\n")
