"""Agents and hosts kept as the id of their name (migration 20): rows written before and after read back the same,
every filter finds both through its index, and an edited names table fails `log verify`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from goex_proxy.audit import layout, names
from goex_proxy.audit import store as audit
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.cli import cli
from goex_proxy.console import data as console_data
from goex_proxy.errors import AuditError
from goex_proxy.ids import RequestIds, packed
from tests.unit.test_audit_storage import intent, outcome, ro, verify, write

HOSTS = ("slack.com", "api.github.com")
AGENTS = ("mailbot", "ghbot")


def rows_of(ids: RequestIds, start: int, count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Rows that take turns through two hosts and two agents (agent and host apart: a filter on one mixes both of
    the other)."""
    return [(intent(ids, i, agent=AGENTS[i % 2], host=HOSTS[(i // 2) % 2],
                    url=f"https://{HOSTS[(i // 2) % 2]}/api/chat.postMessage?n={i}"), outcome(i))
            for i in range(start, start + count)]


def old_then_new(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A log written by schema 19 (agents and hosts as they are), then by this version: (old rows, new rows)."""
    ids = RequestIds()
    old, new = rows_of(ids, 0, 8), rows_of(ids, 20, 8)
    stored = layout.stored
    with monkeypatch.context() as old_version:
        old_version.setattr(audit, "MIGRATIONS", audit.MIGRATIONS[:19])
        old_version.setattr(layout, "stored", lambda fields, put, kind=(), name=None, **rest: stored(fields, put, kind, **rest))
        write(home, old)
    write(home, new)  # migrates, then writes ids
    return [r for r, _ in old], [r for r, _ in new]


def test_rows_written_before_and_after_read_back_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old rows keep their names as text, new ones hold a one-byte id (each name stored once); get, iter_rows, query,
    the console's page and undo's read of a row's URL give the names, and the chain verifies across both."""
    old, new = old_then_new(tmp_path, monkeypatch)
    conn = ro(tmp_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(audit.MIGRATIONS) >= 20
    kinds = conn.execute("SELECT typeof(agent), typeof(host), length(agent), length(host) FROM requests ORDER BY seq"
                         ).fetchall()
    assert kinds[:8] == [("text", "text", len(r["agent"]), len(r["host"])) for r in old]
    assert kinds[8:] == [("blob", "blob", 1, 1)] * 8
    classes = {done["undo_class"] for _, done in rows_of(RequestIds(), 20, 8)}  # an undo class is a name too (25)
    assert conn.execute("SELECT typeof(undo_class) FROM requests ORDER BY seq").fetchall() == \
        [("text",)] * 8 + [("blob",)] * 8
    assert sorted(n for (n,) in conn.execute("SELECT name FROM audit_names")) == sorted([*AGENTS, *HOSTS, *classes])
    for row in old + new:
        got = audit.get(conn, str(row["id"]))
        assert {k: got[k] for k in row} == row
    assert [(r["agent"], r["host"], r["url"]) for r in audit.iter_rows(conn)] == \
        [(r["agent"], r["host"], r["url"]) for r in old + new]
    listed = [(r["id"], r["agent"], r["host"], r["url"]) for r in audit.query(conn, limit=None)]
    assert listed == [(r["id"], r["agent"], r["host"], r["url"]) for r in reversed(old + new)]
    page = console_data.page(conn, console_data.Filters(), limit=100)
    assert [(r["id"], r["agent"], r["host"], r["url"]) for r in page] == listed
    term, forms = layout.id_term(new[0]["id"])
    read = next(layout.read(conn, f"SELECT method, scheme, host, port, path, url FROM requests WHERE {term}",
                            forms))  # as undo reads what went upstream
    assert (read["host"], read["url"]) == (new[0]["host"], new[0]["url"])
    assert (verify(tmp_path).checked, verify(tmp_path).broken_id) == (16, None)


def test_filters_by_agent_and_host_find_old_and_new_rows_through_their_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`log --agent/--host` (audit.query) and the console's filters (its page and live stream) find the rows that
    hold the name and those that hold its id, and SQLite reads each through the agent's or host's index (within the
    blocks of time that can hold them: `times.window`'s counts and the listing itself)."""
    old, new = old_then_new(tmp_path, monkeypatch)
    conn = ro(tmp_path)
    executed: list[str] = []
    conn.set_trace_callback(executed.append)
    for column, value in [("agent", a) for a in AGENTS] + [("host", h) for h in HOSTS]:
        wanted = [str(r["id"]) for r in reversed(old + new) if r[column] == value]
        assert len(wanted) == 8
        executed.clear()
        assert [r["id"] for r in audit.query(conn, **{column: value}, limit=None)] == wanted
        assert [r["id"] for r in audit.query(conn, **{column: value}, since=0, limit=3)] == wanted[:3]
        both = console_data.Filters(**{column: value})
        assert [r["id"] for r in console_data.page(conn, both, limit=100)] == wanted
        assert [r["id"] for r in console_data.newer(conn, both, 0)[0]] == wanted[::-1]
        selects = [sql for sql in executed if sql.startswith("SELECT") and f"{column} COLLATE BINARY IN (" in sql]
        indexed = [sql for sql in selects if f"+{column}" not in sql]  # the live stream reads by seq, by design
        assert len(indexed) >= 3 and len(selects) - len(indexed) == 1, executed
        for sql in indexed:
            plan = str(conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())
            assert f"INDEX idx_requests_{column} ({column}=?" in plan, (sql, plan)
    with sqlite3.connect(tmp_path / "a.db") as raw:  # a name no row has yet: the filter is on the text alone
        raw.execute("INSERT INTO audit_names (name) VALUES ('nobody')")
    assert audit.query(conn, agent="nobody") == [] and audit.query(conn, host="nowhere") == []
    both = console_data.Filters(agent="mailbot", host="slack.com")
    assert [r["id"] for r in console_data.page(conn, both)] == \
        [str(r["id"]) for r in reversed(old + new) if (r["agent"], r["host"]) == ("mailbot", "slack.com")]


def test_log_agent_and_host_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`goex-proxy log --agent X` and `--host Y` list old and new rows with their names."""
    old, new = old_then_new(tmp_path, monkeypatch)
    config = tmp_path / "config.yaml"
    config.write_text(f"version: 1\nstate_dir: {tmp_path}\naudit: {{db: {tmp_path / 'a.db'}}}\n", encoding="utf-8")
    for option, column, value in (("--agent", "agent", "ghbot"), ("--host", "host", "api.github.com")):
        result = CliRunner().invoke(cli, ["log", "--config", str(config), option, value, "--limit", "100", "--json"])
        assert result.exit_code == 0, result.output
        listed = [json.loads(line) for line in result.output.splitlines()]
        assert [(r["id"], r["agent"], r["host"]) for r in listed] == \
            [(r["id"], r["agent"], r["host"]) for r in old + new if r[column] == value]
    result = CliRunner().invoke(cli, ["log", "verify", "--config", str(config)])
    assert result.exit_code == 0 and result.output.startswith("ok: 16 rows"), result.output


def test_an_edited_names_table_fails_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The names table is outside the chain, but every row's hash covers its names: a name rewritten in the table
    breaks the first row holding its id (in one line from `log verify`); a name removed makes that row unreadable,
    which `get` says in one line and a lenient read shows as such, never a traceback."""
    old, new = old_then_new(tmp_path, monkeypatch)
    config = tmp_path / "config.yaml"
    config.write_text(f"version: 1\nstate_dir: {tmp_path}\naudit: {{db: {tmp_path / 'a.db'}}}\n", encoding="utf-8")
    first = next(r for r in new if r["host"] == "api.github.com")
    with sqlite3.connect(tmp_path / "a.db") as raw:
        raw.execute("UPDATE audit_names SET name = 'evil.example' WHERE name = 'api.github.com'")
    result = CliRunner().invoke(cli, ["log", "verify", "--config", str(config)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"BROKEN at row {first['id']} (seq {9 + new.index(first)}): its request fields do not match its hash (the row "
        f"was edited); {8 + new.index(first)} rows before it are intact (checked against the state directory's "
        "anchor)"]
    with sqlite3.connect(tmp_path / "a.db") as raw:
        raw.execute("UPDATE audit_names SET name = 'api.github.com' WHERE name = 'evil.example'")
    assert verify(tmp_path).broken_id is None
    victim = new[0]
    with sqlite3.connect(tmp_path / "a.db") as raw:
        (gone,) = raw.execute("SELECT id FROM audit_names WHERE name = ?", (victim["agent"],)).fetchone()
        raw.execute("DELETE FROM audit_names WHERE id = ?", (gone,))
    result = verify(tmp_path)
    assert (result.broken_id, result.checked) == (victim["id"], 8)
    with pytest.raises(AuditError, match=f"the agent of row {victim['id']} cannot be read"):
        audit.get(ro(tmp_path), str(victim["id"]))
    shown = audit.get(ro(tmp_path), str(victim["id"]), lenient=True)
    assert shown["agent"] == layout.unreadable("agent", f"name {gone} is missing") \
        and shown["host"] == victim["host"]
    assert [r["id"] for r in console_data.page(ro(tmp_path), console_data.Filters(), limit=100)][-9] == victim["id"]


def test_writers_sharing_a_log_agree_on_every_id(tmp_path: Path) -> None:
    """Two writers (two workers of `run`) each take a name's id from the database in the transaction of the row,
    so a name one of them stored is the other's too, and each name is stored once."""
    path, ids = tmp_path / "a.db", RequestIds()
    first, second = AuditWriter(path, Seal(tmp_path)), AuditWriter(path, Seal(tmp_path))
    written = []
    try:
        for i in range(40):  # names new to both, then known to one of them
            row = intent(ids, i, agent=f"agent-{i % 7}", host=f"h{i % 5}.example", url=f"https://h{i % 5}.example/x")
            (first if i % 3 else second).record_intent(row).result(5)
            written.append(row)
    finally:
        first.close()
        second.close()
    conn = ro(tmp_path)
    stored = dict(conn.execute("SELECT name, id FROM audit_names").fetchall())
    assert sorted(stored) == sorted({f"agent-{i}" for i in range(7)} | {f"h{i}.example" for i in range(5)})
    refs = conn.execute("SELECT agent, host FROM requests ORDER BY seq").fetchall()
    assert refs == [(names.ref_of(stored[r["agent"]]), names.ref_of(stored[r["host"]])) for r in written]
    assert [(r["agent"], r["host"]) for r in audit.iter_rows(conn)] == [(r["agent"], r["host"]) for r in written]
    assert verify(tmp_path).broken_id is None


def test_a_name_stored_by_a_rolled_back_write_is_not_named(tmp_path: Path) -> None:
    """A write that rolled back gives back the id it took for a new name, which another writer may then give another
    name: the writer forgets the ids it learnt, so its next row with that name holds the name's id, not the other's."""
    path, ids = tmp_path / "a.db", RequestIds()
    first, second = AuditWriter(path, Seal(tmp_path)), AuditWriter(path, Seal(tmp_path))
    try:
        kept = intent(ids, 1)
        first.record_intent(kept).result(5)
        again = intent(ids, 2, host="lost.example", url="https://lost.example/x") | {"id": kept["id"]}
        with pytest.raises(AuditError, match="UNIQUE"):  # its id is taken: the row, and its new name, roll back
            first.record_intent(again).result(5)
        other = intent(ids, 3, host="other.example", url="https://other.example/x")
        second.record_intent(other).result(5)  # takes the id given back
        later = intent(ids, 4, host="lost.example", url="https://lost.example/x")
        first.record_intent(later).result(5)
    finally:
        first.close()
        second.close()
    conn = ro(tmp_path)
    assert [audit.get(conn, str(r["id"]))["host"] for r in (other, later)] == ["other.example", "lost.example"]
    assert verify(tmp_path).broken_id is None


def test_an_outcome_found_by_its_row_keeps_the_rows_names_as_its_blobs_family(tmp_path: Path) -> None:
    """An outcome for a row another writer wrote reads the row's agent and host back as names (the owner and family
    its blobs are stored under), not as the ids the row holds."""
    path, ids = tmp_path / "a.db", RequestIds()
    row = intent(ids, 1)
    first, second = AuditWriter(path, Seal(tmp_path)), AuditWriter(path, Seal(tmp_path))
    seen: list[tuple[Any, ...]] = []
    real = second._stored
    second._stored = lambda fields, kind, *rest: seen.append(kind) or real(fields, kind, *rest)  # type: ignore[method-assign]
    try:
        first.record_intent(row).result(5)
        second.record_outcome(str(row["id"]), outcome(1)).result(5)
        assert seen == [(row["agent"], row["host"], row["method"])]
        assert audit.get(ro(tmp_path), str(row["id"]))["status"] == 200 and verify(tmp_path).broken_id is None
    finally:
        second.close()
        first.close()


def test_a_ref_the_writer_never_stores_fails_verify_in_one_line(tmp_path: Path) -> None:
    """An id stored with more bytes than it needs (b"\\x00\\x07" for 7) read as that id's name: it verified, while
    `log --agent` and the console's filter, which look for the ref as written, passed the row by (a row hidden from
    its agent's view). One past SQLite's integers raised OverflowError out of verify, log and the console. Both read
    as no name: verify names the row, `get` says so in one line, a lenient read shows it as unreadable."""
    ids = RequestIds()
    rows = [(intent(ids, i, agent=AGENTS[i % 2]), outcome(i)) for i in range(4)]
    write(tmp_path, rows)
    victim = rows[2][0]
    with sqlite3.connect(tmp_path / "a.db") as raw:
        (ref,) = raw.execute("SELECT agent FROM requests WHERE id = ?", (packed(victim["id"]),)).fetchone()
    for stored in (b"\x00" + ref, b"\xff" * 8, b"\xff" * 9, b"\x01" * 4096, b""):
        with sqlite3.connect(tmp_path / "a.db") as raw:
            raw.execute("UPDATE requests SET agent = ? WHERE id = ?", (stored, packed(victim["id"])))
        result = verify(tmp_path)
        assert (result.broken_id, result.checked) == (victim["id"], 2), stored[:9]
        with pytest.raises(AuditError, match=f"the agent of row {victim['id']} cannot be read"):
            audit.get(ro(tmp_path), str(victim["id"]))
        shown = audit.get(ro(tmp_path), str(victim["id"]), lenient=True)["agent"]
        assert shown.startswith("<unreadable agent: "), stored[:9]
        page = console_data.page(ro(tmp_path), console_data.Filters(), limit=100)
        assert [r["agent"] for r in page][1] == shown
        assert [r["id"] for r in audit.query(ro(tmp_path), agent=AGENTS[0])] == [str(rows[0][0]["id"])]
    with sqlite3.connect(tmp_path / "a.db") as raw:
        raw.execute("UPDATE requests SET agent = ? WHERE id = ?", (ref, packed(victim["id"])))
    assert verify(tmp_path).broken_id is None


def test_a_filter_finds_every_row_that_reads_as_its_name_and_no_other(tmp_path: Path) -> None:
    """The names table is outside the chain: rebuilt without its UNIQUE, a name can have a second id, whose rows read
    as the name and verify; the filter found only the first id's rows. Rebuilt with another collation, `name = ?`
    finds other names: a filter on one gave another agent's rows. A filter takes every id whose name is exactly its
    own."""
    ids = RequestIds()
    rows = [(intent(ids, i, agent=AGENTS[i % 2]), outcome(i)) for i in range(4)]
    write(tmp_path, rows)
    mine = [str(r["id"]) for r, _ in reversed(rows) if r["agent"] == AGENTS[0]]
    with sqlite3.connect(tmp_path / "a.db") as raw:
        raw.executescript(f"""
            CREATE TABLE rebuilt (id INTEGER PRIMARY KEY, name TEXT NOT NULL COLLATE NOCASE);
            INSERT INTO rebuilt SELECT id, name FROM audit_names; DROP TABLE audit_names;
            ALTER TABLE rebuilt RENAME TO audit_names;
            INSERT INTO audit_names VALUES (200, '{AGENTS[0]}');
            INSERT INTO audit_names VALUES (201, '{AGENTS[1].upper()}');
            UPDATE requests SET agent = X'c8' WHERE id = X'{(packed(mine[0]) or b"").hex()}';
        """)
        # the row holds its id packed (migration 23): an edit by the id as text would change no row, and leave the
        # filter nothing to find under the second id
        assert raw.execute("SELECT count(*) FROM requests WHERE agent = X'c8'").fetchone() == (1,)
    assert verify(tmp_path).broken_id is None  # the row reads as it was written
    conn = ro(tmp_path)
    assert [r["id"] for r in audit.query(conn, agent=AGENTS[0])] == mine
    assert [r["id"] for r in console_data.page(conn, console_data.Filters(agent=AGENTS[0]))] == mine
    assert [r["id"] for r in console_data.newer(conn, console_data.Filters(agent=AGENTS[0]), 0)[0]] == mine[::-1]
    assert audit.query(conn, agent=AGENTS[1].upper()) == []  # not ghbot's rows


def test_a_filter_on_a_name_that_is_not_utf8_finds_its_rows(tmp_path: Path) -> None:
    """An agent name with a byte that is not UTF-8 (a lone surrogate, as argv and headers read it) is stored in its
    escaped form, as every text of a row is; `log --agent` with that name ended in an internal error
    (UnicodeEncodeError) instead of finding its rows. Names that differ by a NUL, a case or a normalisation stay
    apart."""
    ids = RequestIds()
    agents = ["a\udcff", "a\x00b", "a", "A", "\u00e9", "e\u0301"]
    rows = [(intent(ids, i, agent=agent), outcome(i)) for i, agent in enumerate(agents)]
    write(tmp_path, rows)
    conn = ro(tmp_path)
    for (row, _), agent in zip(rows, agents, strict=True):
        assert [r["id"] for r in audit.query(conn, agent=agent)] == [str(row["id"])], repr(agent)
        assert [r["id"] for r in console_data.page(conn, console_data.Filters(agent=agent))] == [str(row["id"])]
    config = tmp_path / "config.yaml"
    config.write_text(f"version: 1\nstate_dir: {tmp_path}\naudit: {{db: {tmp_path / 'a.db'}}}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["log", "--config", str(config), "--agent", agents[0], "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.output.splitlines()] == [str(rows[0][0]["id"])]
    assert verify(tmp_path).broken_id is None


def test_an_id_given_a_second_name_names_neither(tmp_path: Path) -> None:
    """Rebuilt without its primary key, the names table can give one id two names: its rows read as whichever came
    last and verified, while a filter on the other name gave them too (another agent's rows). Such an id names
    nothing: verify names its first row."""
    ids = RequestIds()
    rows = [(intent(ids, i, agent=AGENTS[i % 2]), outcome(i)) for i in range(4)]
    write(tmp_path, rows)
    with sqlite3.connect(tmp_path / "a.db") as raw:
        (mine,) = raw.execute("SELECT id FROM audit_names WHERE name = ?", (AGENTS[0],)).fetchone()
        raw.executescript(f"""
            CREATE TABLE rebuilt (id INTEGER, name TEXT NOT NULL);
            INSERT INTO rebuilt VALUES ({mine}, 'intruder');
            INSERT INTO rebuilt SELECT id, name FROM audit_names; DROP TABLE audit_names;
            ALTER TABLE rebuilt RENAME TO audit_names;
        """)
    assert [r["agent"] for r in audit.iter_rows(ro(tmp_path), lenient=True)][0].startswith("<unreadable agent")
    result = verify(tmp_path)
    assert (result.broken_id, result.checked) == (rows[0][0]["id"], 0)


def test_a_filter_compares_names_byte_for_byte_whatever_the_columns_collation(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever can write the database can rewrite its schema: the agent column given NOCASE made a filter on one
    agent (what `log --agent`, the console, session undo and `execute` take an agent's rows by) give another's rows
    written before migration 20, as text, and verify passed (no row changed)."""
    old, new = old_then_new(tmp_path, monkeypatch)
    with sqlite3.connect(tmp_path / "a.db") as raw:
        raw.execute("PRAGMA writable_schema = ON")
        raw.execute("UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE name = 'requests'",
                    ('"agent" TEXT', '"agent" TEXT COLLATE NOCASE'))
    conn = ro(tmp_path)
    assert "COLLATE NOCASE" in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'requests'").fetchone()[0]
    assert verify(tmp_path).broken_id is None
    shouted = AGENTS[0].upper()
    assert audit.query(conn, agent=shouted) == []
    assert console_data.page(conn, console_data.Filters(agent=shouted)) == []
    assert console_data.newer(conn, console_data.Filters(agent=shouted), 0)[0] == []
    assert [r["id"] for r in audit.query(conn, agent=AGENTS[0], limit=None)] == \
        [str(r["id"]) for r in reversed(old + new) if r["agent"] == AGENTS[0]]


def test_a_prune_in_the_writers_own_transaction_removes_names_the_writer_then_stores_again(tmp_path: Path) -> None:
    """Retention prunes through the writer (`apply`): the names only pruned rows held go (hosts and undo classes
    alike; not the newest id, which SQLite would give the next name), and a row the same writer then writes with such
    a host reads back and verifies, where it named the removed id. The writer remembers a bounded number of names."""
    from goex_proxy.audit.prune import prune_batch, upper_bound

    ids = RequestIds()
    rows = [(intent(ids, i, host=f"h{i}.example", undo_class=None), outcome(i) | {"undo_class": f"irreversible {i}"})
            for i in range(6)]  # undo classes are names too (migration 25); these leave the rows prunable
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        for row, done in rows:
            writer.record_intent(row).result(5)
            writer.record_outcome(str(row["id"]), done).result(5)
        before = float(rows[4][0]["ts"]) + 0.5  # rows 0 to 4 go; row 5 (the newest) stays
        key = Seal(tmp_path).key()
        assert key is not None
        writer.apply(lambda conn, w: prune_batch(conn, key, before, {}, upper=upper_bound(conn, before, None))
                     ).result(5)
        with sqlite3.connect(tmp_path / "a.db") as raw:
            assert sorted(n for (n,) in raw.execute("SELECT name FROM audit_names")) == \
                ["bot", "h5.example", "irreversible 5"]
        again = intent(ids, 9, host="h2.example")
        writer.record_intent(again).result(5)
        writer.record_outcome(str(again["id"]), outcome(9)).result(5)
    finally:
        writer.close()
    assert [r["host"] for r in audit.iter_rows(ro(tmp_path))] == ["h5.example", "h2.example"]
    assert (verify(tmp_path).broken_id, verify(tmp_path).checked) == (None, 2)

    kept = names.Names(recent=3)
    with sqlite3.connect(tmp_path / "a.db") as raw:
        for n in range(10):
            kept.id_of(raw, f"many{n}.example")
        assert len(kept._ids) == 3


def test_a_name_pruned_by_another_process_is_stored_again_by_a_writer_that_remembers_it(tmp_path: Path) -> None:
    """A writer builds on the log as its last transaction left it while no other connection wrote since (SQLite's
    data_version): a prune by another process (here another writer's connection) removes a name this writer
    remembers, and the row it writes next with that host must name it anew, not the removed id."""
    from goex_proxy.audit.prune import prune_batch, upper_bound

    ids = RequestIds()
    writer, pruner = AuditWriter(tmp_path / "a.db", Seal(tmp_path)), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        for i in range(3):
            row = intent(ids, i, host=f"h{i}.example", undo_class=None)
            writer.record_intent(row).result(5)  # irreversible: nothing left for undo, prunable
            writer.record_outcome(str(row["id"]), outcome(i) | {"undo_class": "irreversible"}).result(5)
        before = float(row["ts"]) - 0.5  # rows 0 and 1 go (and h0, h1 with them); row 2, the newest, stays
        key = Seal(tmp_path).key()
        assert key is not None
        pruner.apply(lambda conn, w: prune_batch(conn, key, before, {}, upper=upper_bound(conn, before, None))
                     ).result(5)
        with sqlite3.connect(tmp_path / "a.db") as raw:
            assert "h1.example" not in {n for (n,) in raw.execute("SELECT name FROM audit_names")}
        again = intent(ids, 9, host="h1.example")
        writer.record_intent(again).result(5)
        writer.record_outcome(str(again["id"]), outcome(9)).result(5)
    finally:
        writer.close()
        pruner.close()
    assert [r["host"] for r in audit.iter_rows(ro(tmp_path))] == ["h2.example", "h1.example"]
    assert verify(tmp_path).broken_id is None


def _spellings(host: str, count: int) -> list[str]:
    """`count` spellings of a host that policies read as the same host (each letter in either case, a trailing dot)."""
    letters = [i for i, c in enumerate(host) if c.isalpha()]
    out = []
    for n in range(count):
        chars = list(host)
        for bit, at in enumerate(letters):
            if n >> (bit + 1) & 1:
                chars[at] = chars[at].upper()
        out.append("".join(chars) + ("." if n & 1 else ""))
    return out


def test_a_host_with_more_spellings_than_sqlite_takes_parameters_is_still_filtered(tmp_path: Path) -> None:
    """An agent can give a host as many spellings as it sends requests, each a name of its own; a filter that passed
    each one's id as a parameter failed past SQLite's limit on them (250,000 here: "too many SQL variables")."""
    host = "notes.example.example"
    spellings = _spellings(host, 260_000)
    ids = RequestIds()
    rows = [(intent(ids, i, host=spellings[n]), outcome(i)) for i, n in enumerate((0, 7, 259_999))]
    write(tmp_path, rows)
    with sqlite3.connect(tmp_path / "a.db") as raw:
        raw.executemany("INSERT OR IGNORE INTO audit_names (name) VALUES (?)", ((s,) for s in spellings))
    conn = ro(tmp_path)
    wanted = [str(r["id"]) for r, _ in reversed(rows)]
    assert [r["id"] for r in audit.query(conn, host=host.upper())] == wanted
    assert [r["id"] for r in console_data.page(conn, console_data.Filters(host=host))] == wanted
