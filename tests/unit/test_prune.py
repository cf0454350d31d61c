"""Pruning the audit log: old rows go, what undo, limits and waiting requests need stays, and `log verify` holds
across every gap while still catching a removal, an edit or a forged gap."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from goex_proxy import cli
from goex_proxy.audit import layout
from goex_proxy.audit import prune as pruning
from goex_proxy.audit import store as audit
from goex_proxy.audit.gaps import Gap, gaps
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.console.data import chain_status
from goex_proxy.errors import AuditError
from goex_proxy.ids import RequestIds, packed
from goex_proxy.policy.engine import Limit
from goex_proxy.policy.limits import Charge

NOW = time.time()
DAY = 86400.0


def _row(ids: RequestIds, age_days: float, **extra: Any) -> dict[str, Any]:
    ts = NOW - age_days * DAY
    return {"id": ids.new(), "ts": ts, "agent": "bot", "method": "GET", "scheme": "https", "host": "api.example",
            "port": 443, "path": "/x", "url": "https://api.example/x", "req_headers": "[]", "req_body": b"b",
            "decision": "allow", **extra}


class Log:
    """A real audit log written by the real writer: `add` appends a row (with its outcome unless `open`)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.writer = AuditWriter(home / "a.db", Seal(home))
        self.ids = RequestIds()
        self.added: list[str] = []

    def add(self, age_days: float, *, status: int = 200, undo_class: str | None = "irreversible",
            charge: Charge | None = None, open: bool = False, **extra: Any) -> str:
        row = _row(self.ids, age_days, **extra)
        self.writer.record_intent(row, charge).result(5)
        if not open:
            self.writer.record_outcome(row["id"], {"status": status, "ended": row["ts"] + 1, "duration_ms": 1.0,
                                                   "undo_class": undo_class}).result(5)
        self.added.append(row["id"])
        return str(row["id"])

    def conn(self) -> sqlite3.Connection:
        return audit.open_db(self.home / "a.db", seal=Seal(self.home))

    def prune(self, older_than_days: float, windows: dict[str, float | None] | None = None,
              **kw: Any) -> pruning.Pruned:
        seal = Seal(self.home)
        conn = self.conn()
        try:
            return pruning.prune(conn, seal.key(), NOW - older_than_days * DAY, windows or {}, seal.anchor(), **kw)
        finally:
            conn.close()

    def verify(self) -> audit.VerifyResult:
        seal = Seal(self.home)
        conn = audit.open_db(self.home / "a.db", readonly=True)
        try:
            return audit.verify(conn, audit.chain_key(conn, seal), seal.anchor())
        finally:
            conn.close()

    def left(self) -> list[str]:
        conn = self.conn()
        try:
            return [layout.id_read(r[0]) for r in conn.execute("SELECT id FROM requests ORDER BY seq")]
        finally:
            conn.close()


@pytest.fixture
def log(tmp_path: Path) -> Log:
    made = Log(tmp_path)
    yield made
    made.writer.close()


def test_old_rows_go_and_the_chain_verifies_across_the_gaps(log: Log) -> None:
    old = [log.add(200 - i) for i in range(20)]
    undoable = log.add(150, undo_class="exact")           # in the middle of the old rows: a second gap after it
    older = [log.add(140 - i) for i in range(10)]
    recent = [log.add(1) for _ in range(5)]
    done = log.prune(90)
    assert done.rows == 30 and done.kept[pruning.KEPT_UNDOABLE] == 1 and done.gaps == 2
    assert log.left() == [undoable, *recent]
    result = log.verify()
    assert result.broken_id is None and result.pruned == 30 and result.checked == 6
    assert set(old + older).isdisjoint(log.left())


def test_small_batches_join_into_one_gap(log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pruning, "BATCH", 3)  # a run of removed rows spans many transactions
    for i in range(25):
        log.add(200 - i)
    keep = log.add(1)
    done = log.prune(90)
    assert done.rows == 25 and log.left() == [keep]
    conn = log.conn()
    recorded = list(gaps(conn).values())
    assert len(recorded) == 1 and recorded[0].rows == 25
    assert log.verify().broken_id is None
    # Pruning again (nothing older left) keeps it as it is.
    assert log.prune(90).rows == 0 and log.verify().pruned == 25


def _journal(log: Log, request_id: str, *states: str, age_days: float = 150) -> None:
    conn = log.conn()
    with conn:
        conn.executemany("INSERT INTO undo_journal (request_id, step, state, ts) VALUES (?, ?, ?, ?)",
                         [(request_id, i, state, NOW - age_days * DAY) for i, state in enumerate(states)])
    conn.close()


def test_what_is_still_needed_stays(log: Log) -> None:
    undoable = log.add(200, undo_class="needs-preimage")
    undone = log.add(200, undo_class="exact")
    log.add(200, undo_of=undone)                                      # its compensation
    half_undone = log.add(200, undo_class="exact")                    # its undo's second step failed: retry it
    failed = log.add(200, undo_class="exact", status=500)             # nothing to undo
    limited = log.add(200, charge=Charge("bot", ("p/yearly",), NOW - 200 * DAY, (("p/yearly", Limit(5, 365 * DAY, "year")),)))
    lapsed = log.add(200, charge=Charge("bot", ("p/daily",), NOW - 200 * DAY))
    lost = log.add(200, open=True)                                    # in flight when its proxy died, long ago
    newest = log.add(0)
    _journal(log, undone, "done")
    _journal(log, half_undone, "done", "failed")
    done = log.prune(90, {"p/yearly": 365 * DAY, "p/daily": DAY})
    left = log.left()
    assert undoable in left and limited in left and half_undone in left
    assert undone not in left and failed not in left and lapsed not in left and lost not in left
    assert done.kept == {pruning.KEPT_UNDOABLE: 2, pruning.KEPT_LIMIT: 1}
    conn = log.conn()
    hits = {r[0] for r in conn.execute("SELECT request_id FROM limit_hits")}
    assert hits == {limited}  # the lapsed charge's hit went with its row
    journal = {r[0] for r in conn.execute("SELECT request_id FROM undo_journal")}
    assert journal == {half_undone}  # the finished undo's journal went with its row, the unfinished one stays
    assert log.verify().broken_id is None
    # Asked to, undoable rows go too.
    again = log.prune(90, {"p/yearly": 365 * DAY}, include_undoable=True)
    assert log.left() == [limited, newest] and log.verify().broken_id is None
    joins = sorted(g.rows for g in gaps(log.conn()).values())
    assert again.rows == 2 and joins == [2, 5]  # the gaps around them joined: 5 rows before `limited`, 2 after it


def test_a_request_still_in_flight_stays(log: Log) -> None:
    open_one = log.add(2, open=True)
    log.add(0)
    assert log.prune(1).kept == {pruning.KEPT_OPEN: 1} and open_one in log.left()


def test_a_prune_never_covers_rows_someone_removed(log: Log) -> None:
    """Removing kept rows next to a gap is caught by verify; the next prune must refuse rather than sign a gap over
    them (it once merged the gap after them into a new one, and verify then passed)."""
    first = log.add(200, undo_class="exact")           # kept: undoable
    victim = log.add(199, undo_class="exact")          # kept: undoable
    log.add(198)                                       # pruned: a gap joins `victim` to `recent`
    recent = log.add(1)
    log.prune(90)
    assert log.left() == [first, victim, recent]
    with sqlite3.connect(log.home / "a.db") as conn:
        conn.execute("DELETE FROM requests WHERE id = ?", (packed(victim),))
    assert log.verify().broken_id == recent
    with pytest.raises(AuditError, match="does not hold"):
        log.prune(90, include_undoable=True)
    assert log.verify().broken_id == recent  # still caught


def test_a_prune_never_removes_a_row_whose_outcome_was_edited(log: Log) -> None:
    kept = log.add(200, undo_class="exact")
    log.add(0)
    with sqlite3.connect(log.home / "a.db") as conn:
        conn.execute("UPDATE requests SET undo_class = 'irreversible' WHERE id = ?", (packed(kept),))  # to make it prunable
    with pytest.raises(AuditError, match="it was edited"):
        log.prune(90)
    assert kept in log.left() and log.verify().broken_id == kept


def test_repeated_prunes_count_every_row_once(log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows kept by one prune and removed by a later one take the gaps before them into the new gap: the gap
    records add up to what verify says was pruned, and no gap record is left over."""
    monkeypatch.setattr(pruning, "BATCH", 4)
    keep = []
    for i in range(30):
        keep.append(log.add(200 - i, undo_class="exact" if i % 3 == 0 else "irreversible"))
    log.add(0)
    first = log.prune(90)
    assert first.rows == 20
    second = log.prune(90, include_undoable=True)
    assert second.rows == 10
    conn = log.conn()
    recorded = list(gaps(conn).values())
    result = log.verify()
    assert result.broken_id is None and result.pruned == 30
    assert len(recorded) == 1 and recorded[0].rows == 30


def test_the_newest_row_stays_however_old(log: Log) -> None:
    rows = [log.add(300 - i) for i in range(4)]
    log.prune(1)
    assert log.left() == [rows[-1]] and log.verify().broken_id is None


def test_a_removal_next_to_a_gap_is_still_caught(log: Log) -> None:
    for i in range(10):
        log.add(200 - i)
    kept = [log.add(1) for _ in range(3)]
    log.prune(90)
    with sqlite3.connect(log.home / "a.db") as conn:
        conn.execute("DELETE FROM requests WHERE id = ?", (packed(kept[0]),))  # the row the gap joins to
    result = log.verify()
    assert result.broken_id == kept[1]


def test_a_gap_forged_or_edited_without_the_key_is_caught(log: Log) -> None:
    rows = [log.add(200 - i) for i in range(6)] + [log.add(1) for _ in range(2)]
    # Remove rows by hand and write a gap record as an attacker without the chain key would.
    conn = sqlite3.connect(log.home / "a.db")
    with conn:
        after = audit.get(conn, rows[3])  # its prev_hash and hash as the chain has them (stored as bytes, or left out)
        first = conn.execute("SELECT seq FROM requests WHERE id = ?", (packed(rows[1]),)).fetchone()[0]
        before = audit.get(conn, rows[0])["hash"]
        conn.execute("UPDATE requests SET prev_hash = ? WHERE id = ?", (bytes.fromhex(after["prev_hash"]), packed(rows[3])))
        conn.execute("DELETE FROM requests WHERE id IN (?, ?)", (packed(rows[1]), packed(rows[2])))
        forged = Gap(after["seq"], first, first + 1, 2, before, after["prev_hash"], NOW).signed(b"not the key" * 3)
        conn.execute("INSERT INTO audit_gaps VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*forged.fields(), forged.mac))
    assert log.verify().broken_id == rows[3]


def test_a_gap_edited_without_the_key_is_caught(log: Log) -> None:
    for i in range(6):
        log.add(200 - i)
    after = log.add(1)
    log.prune(90)
    with sqlite3.connect(log.home / "a.db") as conn:
        conn.execute("UPDATE audit_gaps SET rows = rows - 1")  # claims fewer rows were pruned
    assert log.verify().broken_id == after


def test_a_broken_chain_is_not_pruned_away(log: Log) -> None:
    rows = [log.add(200 - i) for i in range(5)] + [log.add(1)]
    with sqlite3.connect(log.home / "a.db") as conn:
        conn.execute("UPDATE requests SET path = '/edited' WHERE id = ?", (packed(rows[2]),))
    with pytest.raises(AuditError, match=f"does not hold at row {rows[2]}"):
        log.prune(90)
    assert rows[2] in log.left()  # the edited row is still there to be found


def test_the_console_shows_the_row_after_a_gap_as_intact(log: Log) -> None:
    for i in range(5):
        log.add(200 - i)
    kept = log.add(1)
    log.add(0)
    log.prune(90)
    conn = log.conn()
    row = audit.get(conn, kept)
    intact, said = chain_status(conn, Seal(log.home), row)
    assert intact and "5 older rows before it were pruned" in said


def test_log_prune_command(log: Log, tmp_path: Path) -> None:
    for i in range(8):
        log.add(100 - i)  # 100 to 93 days old
    log.add(1)
    config = tmp_path / "config.yaml"
    config.write_text(f"version: 1\nstate_dir: {tmp_path}\naudit: {{db: {tmp_path / 'a.db'}, retention: 30d}}\n"
                      "agents: {bot: {token: bot-token-4242}}\n")
    runner = CliRunner()
    out = runner.invoke(cli.cli, ["log", "prune", "--config", str(config)])
    assert out.exit_code == 0 and "pruned 8 rows older than 30d" in out.output, out.output
    verified = runner.invoke(cli.cli, ["log", "verify", "--config", str(config)])
    assert verified.exit_code == 0 and "8 older rows pruned" in verified.output, verified.output
    bad = runner.invoke(cli.cli, ["log", "prune", "--config", str(config), "--older-than", "soon"])
    assert bad.exit_code == 2 and "must be a duration" in bad.output


def test_run_prunes_by_the_retention_through_its_own_writer(tmp_path: Path) -> None:
    """`run`'s Retention task prunes in batches through the proxy's audit writer, between the rows it records."""
    import asyncio
    import dataclasses

    from goex_proxy.addons.retention import Retention
    from tests.conftest import stage_state

    with stage_state(tmp_path, "version: 1\nname: p\nrules: []\n") as state:
        assert state.writer is not None and state.config is not None
        ids = RequestIds()
        for i in range(12):
            row = _row(ids, 100 - i)
            state.writer.record_intent(row).result(5)
            state.writer.record_outcome(row["id"], {"status": 200, "ended": row["ts"] + 1}).result(5)
        kept = _row(ids, 0)
        state.writer.record_intent(kept).result(5)
        retention = Retention(state)
        assert asyncio.run(retention.prune_once()) is None  # the config says no retention: nothing pruned
        state.config = dataclasses.replace(state.config, retention=30 * DAY)
        done = asyncio.run(retention.prune_once())
        assert done is not None and done.rows == 12
        conn = audit.open_db(tmp_path / "audit.db", readonly=True)
        assert [layout.id_read(r[0]) for r in conn.execute("SELECT id FROM requests")] == [kept["id"]]
        seal = Seal(tmp_path)
        assert audit.verify(conn, audit.chain_key(conn, seal), seal.anchor()).pruned == 12


def test_run_does_not_prune_a_log_whose_blob_counts_were_edited(tmp_path: Path) -> None:
    """The retention task checks the blob counts first, as `log prune` does: one set low in the database would have it
    remove a blob that a kept row still names."""
    import asyncio
    import dataclasses

    from goex_proxy.addons.retention import Retention
    from tests.conftest import stage_state

    with stage_state(tmp_path, "version: 1\nname: p\nrules: []\n") as state:
        assert state.writer is not None and state.config is not None
        ids = RequestIds()
        rows = [_row(ids, 100), _row(ids, 0), _row(ids, 0)]  # an old row, then two kept: one reason, in one blob
        for row in rows:
            state.writer.record_intent({**row, "reason": "the same reason"}).result(5)
        with sqlite3.connect(tmp_path / "audit.db") as conn:
            conn.execute("UPDATE audit_blobs SET refs = 1")
        state.config = dataclasses.replace(state.config, retention=30 * DAY)
        with pytest.raises(AuditError, match="nothing was pruned"):
            asyncio.run(Retention(state).prune_once())
        assert audit.get(audit.open_db(tmp_path / "audit.db", readonly=True), rows[1]["id"])["reason"] == \
            "the same reason"
