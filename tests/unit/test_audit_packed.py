"""Request ids packed into 8 bytes and the decision `allow` left out (migration 23): rows written before and after
read back the same, a lookup by id and every decision filter find both, and the index of decisions holds only the
rows that are not allowed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from goex_proxy import ids as ids_module
from goex_proxy.audit import layout
from goex_proxy.audit import store as audit
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.cli import cli
from goex_proxy.console import data as console_data
from goex_proxy.ids import RequestIds, packed, unpacked
from tests.unit.test_audit_storage import intent, outcome, ro, verify, write

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@given(st.text(alphabet=CROCKFORD, min_size=13, max_size=13))
def test_an_id_packs_to_8_bytes_that_unpack_to_it_or_stays_text(request_id: str) -> None:
    """Every id up to 2**64 packs, and unpacks to exactly itself (leading zeros too); one past does not pack."""
    got = packed(request_id)
    if sum(CROCKFORD.index(c) * 32 ** (12 - i) for i, c in enumerate(request_id)) < 2 ** 64:
        assert got is not None and len(got) == 8 and unpacked(got) == request_id
    else:
        assert got is None


@pytest.mark.parametrize("text", ["", "1M93H42FPAQ0", "1M93H42FPAQ000", "1m93h42fpaq00", "1M93H42FPAQ0U", "G000000000000",
                                  "ZZZZZZZZZZZZZ", "1M93H42FPAQ0\u0660"])
def test_what_is_no_id_or_too_large_does_not_pack(text: str) -> None:
    assert packed(text) is None
    assert layout.id_forms(text) == [text]


def test_the_ids_the_proxy_makes_pack() -> None:
    made = [RequestIds().new() for _ in range(50)]
    assert all(unpacked(packed(i) or b"") == i for i in made)
    assert unpacked(b"\x00" * 7) is None and unpacked(b"\x00" * 9) is None


def rows_of(ids: RequestIds, start: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Rows allowed, denied and held by turns."""
    decisions = ("allow", "deny", "allow", "hold")
    return [(intent(ids, i, decision=decisions[i % 4]), outcome(i)) for i in range(start, start + 8)]


def old_then_new(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A log written by schema 22 (ids as text, `allow` as its name), then by this version: (old rows, new rows)."""
    ids = RequestIds()
    old, new = rows_of(ids, 0), rows_of(ids, 20)
    with monkeypatch.context() as old_version:
        old_version.setattr(audit, "MIGRATIONS", audit.MIGRATIONS[:22])
        old_version.setattr(ids_module, "packed", lambda _: None)
        old_version.delitem(layout.COMMON, "decision")
        write(home, old)
    write(home, new)  # migrates, then packs
    return [r for r, _ in old], [r for r, _ in new]


def test_rows_written_before_and_after_read_back_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old rows hold their id and `allow` as text; new ones 8 bytes and nothing. get (by either), iter_rows, query,
    the console's page, `log` and `show` give both the same, the newest row anchors, and the chain verifies."""
    old, new = old_then_new(tmp_path, monkeypatch)
    conn = ro(tmp_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(audit.MIGRATIONS) >= 23
    kinds = conn.execute("SELECT typeof(id), length(id), typeof(decision), decision FROM requests ORDER BY seq"
                         ).fetchall()
    assert kinds[:8] == [("text", 13, "text", r["decision"]) for r in old]
    assert kinds[8:] == [("blob", 8, "blob", b"") if r["decision"] == "allow" else ("blob", 8, "text", r["decision"])
                         for r in new]
    for row in old + new:
        got = audit.get(conn, str(row["id"]))
        assert {k: got[k] for k in row} == row
    assert [(r["id"], r["decision"]) for r in audit.iter_rows(conn)] == [(r["id"], r["decision"]) for r in old + new]
    listed = [(r["id"], r["decision"]) for r in audit.query(conn, limit=None)]
    assert listed == [(r["id"], r["decision"]) for r in reversed(old + new)]
    assert [(r["id"], r["decision"]) for r in console_data.page(conn, console_data.Filters(), limit=100)] == listed
    assert audit.newest(conn) == Seal(tmp_path).anchor() and audit.newest(conn).id == new[-1]["id"]  # type: ignore[union-attr]
    assert (verify(tmp_path).checked, verify(tmp_path).broken_id) == (16, None)
    AuditWriter(tmp_path / "a.db", Seal(tmp_path)).close()  # its anchor check reads the packed id of the newest row
    config = tmp_path / "config.yaml"
    config.write_text(f"version: 1\nstate_dir: {tmp_path}\naudit: {{db: {tmp_path / 'a.db'}}}\n", encoding="utf-8")
    for row in (old[0], new[0]):
        shown = CliRunner().invoke(cli, ["show", row["id"], "--config", str(config), "--json"])
        assert shown.exit_code == 0 and json.loads(shown.output)["id"] == row["id"], shown.output
    listed = CliRunner().invoke(cli, ["log", "--config", str(config), "--decision", "allow", "--json"])
    assert [json.loads(line)["id"] for line in listed.output.splitlines()] == \
        [r["id"] for r in old + new if r["decision"] == "allow"], listed.output


def test_every_decision_filter_finds_old_and_new_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`log --decision` (audit.query) and the console's filters (page and live stream) find the rows that hold a
    decision's name and, for `allow`, those that leave it out; another decision is read through its index."""
    old, new = old_then_new(tmp_path, monkeypatch)
    conn = ro(tmp_path)
    executed: list[str] = []
    conn.set_trace_callback(executed.append)
    for decision in ("allow", "deny", "hold"):
        wanted = [str(r["id"]) for r in reversed(old + new) if r["decision"] == decision]
        assert len(wanted) == (8 if decision == "allow" else 4)
        executed.clear()
        assert [r["id"] for r in audit.query(conn, decision=decision, limit=None)] == wanted
        assert [r["id"] for r in audit.query(conn, decision=decision, since=0, limit=3)] == wanted[:3]
        chosen = console_data.Filters(decision=decision)
        assert [r["id"] for r in console_data.page(conn, chosen, limit=100)] == wanted
        assert [r["id"] for r in console_data.newer(conn, chosen, 0)[0]] == wanted[::-1]
        if decision != "allow":
            for sql in [s for s in executed if s.startswith("SELECT") and "decision = " in s and "+decision" not in s]:
                plan = str(conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())
                assert "INDEX idx_requests_decision (decision=?" in plan, (sql, plan)


def test_the_index_of_decisions_holds_only_the_rows_not_allowed(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Built again by migration 23 (and without the start by 25), it leaves out both forms of `allow`: the old
    condition would hold every row written since (the empty value is not `allow`)."""
    old, new = old_then_new(tmp_path, monkeypatch)
    with sqlite3.connect(f"file:{tmp_path / 'a.db'}?mode=ro", uri=True) as conn:
        entries = conn.execute("SELECT sum(ncell) FROM dbstat WHERE name = 'idx_requests_decision'").fetchone()[0]
    assert entries == sum(r["decision"] != "allow" for r in old + new) == 8


def test_an_id_that_does_not_pack_is_kept_as_text(tmp_path: Path) -> None:
    """An undo's chosen id past 2**64 (any 13 characters of the alphabet are an id to `identify`) stays text, and is
    found and read back like any other."""
    ids = RequestIds()
    odd, row = intent(ids, 1, id="ZZZZZZZZZZZZZ"), intent(ids, 2)
    write(tmp_path, [(odd, outcome(1)), (row, outcome(2))])
    conn = ro(tmp_path)
    assert conn.execute("SELECT typeof(id) FROM requests ORDER BY seq").fetchall() == [("text",), ("blob",)]
    assert audit.get(conn, "ZZZZZZZZZZZZZ")["id"] == "ZZZZZZZZZZZZZ"
    assert verify(tmp_path).broken_id is None


def test_a_packed_id_of_the_wrong_length_reads_as_damage(tmp_path: Path) -> None:
    """An id column edited to bytes that are not 8 long: `log verify` names the row broken, and a strict read says
    which row, in one line."""
    ids = RequestIds()
    rows = [intent(ids, i) for i in range(3)]
    write(tmp_path, [(r, outcome(i)) for i, r in enumerate(rows)])
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE requests SET id = ? WHERE seq = 2", (b"\x01\x02\x03",))
    result = verify(tmp_path)
    assert result.broken_seq == 2
    conn = ro(tmp_path)
    with pytest.raises(Exception, match="the id of the row at seq 2 is 3 bytes"):
        list(audit.iter_rows(conn))
