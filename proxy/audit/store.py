"""The SQLite audit log: schema migrations, the keyed hash chain, queries and `verify` (its one writer: `writer`)."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AuditError, NotFound
from . import blobs, layout, names, times
from .gaps import gap_holds, gaps
from .layout import hex_of
from .seal import Anchor, Seal, chain_tag, tag_holds
from .snapshot import one_snapshot

if TYPE_CHECKING:
    import sqlite_utils

    from ..config import Config
    from ..configfile import AuditSettings

log = logging.getLogger(__name__)

#: Request fields covered by a row's chained hash, in a fixed order.
REQUEST_FIELDS = ("id", "ts", "agent", "client", "method", "scheme", "host", "port", "path", "url", "http_version",
                  "req_headers", "req_body", "req_body_size", "req_body_sha256", "decision", "rule", "reason", "report")
#: Outcome fields, covered by the row's outcome hash (itself bound to the row's hash).
OUTCOME_FIELDS = ("status", "resp_headers", "resp_body", "resp_body_size", "resp_body_sha256", "error", "ended",
                  "duration_ms")
#: Fields an outcome's hash covers besides those: the undo class (keyed chains), then those covered only when set.
OUTCOME_EXTRAS = ("undo_class", "approval", "row_images")
#: The columns an outcome may set (a field kept in a blob also by its `_blob` column).
OUTCOME_COLUMNS = tuple(c for f in (*OUTCOME_FIELDS, *OUTCOME_EXTRAS)
                        for c in ((f, f"{f}_blob") if f in layout.BLOB_FIELDS else (f,)))
BUSY_TIMEOUT_S = 2.0
#: How many pages the WAL takes before the connection that commits past it checkpoints it (SQLite's default is 1,000).
#: A checkpoint syncs the log and the database within that commit, and every request waiting on the batch waits for
#: it: at 1,000 pages (about 100 batches of rows) one batch in a hundred took 7-9 ms, and the writer 30% longer on
#: average; four times as many pages copy far fewer than four times the pages (the same ones are written again and
#: again: the ends of the tables and their indexes), with a sync as seldom. The WAL then holds up to 16 MiB.
WAL_CHECKPOINT_PAGES = 4000
#: The error of a row whose request was in flight when its proxy stopped.
INTERRUPTED = "interrupted: goex-proxy stopped before the request ended"
#: The error of a row whose request was in flight when its process ended without stopping (killed, crashed).
ORPHANED = "interrupted: the goex-proxy process that sent it ended (killed or crashed) before the request ended"
#: The outcome of a request refused because its row could not be anchored (it was never sent).
UNANCHORED = "refused: its row could not be anchored (the audit anchor could not be written); not sent"


def _migration_1(db: sqlite_utils.Database) -> None:
    columns: dict[str, Any] = {"seq": int, "id": str, "ts": float, "agent": str, "client": str, "method": str,
                               "scheme": str, "host": str, "port": int, "path": str, "url": str, "http_version": str,
                               "req_headers": str, "req_body": bytes, "req_body_size": int, "req_body_sha256": str,
                               "decision": str, "rule": str, "reason": str, "report": str, "status": int,
                               "resp_headers": str, "resp_body": bytes, "resp_body_size": int,
                               "resp_body_sha256": str, "error": str, "ended": float, "duration_ms": float,
                               "prev_hash": str, "hash": str, "outcome_hash": str}
    requests = db.table("requests")
    requests.create(columns, pk="seq")
    requests.create_index(["id"], unique=True)
    requests.create_index(["ts"])
    requests.create_index(["agent", "ts"])
    requests.create_index(["host", "ts"])
    hits = db.table("limit_hits")
    hits.create({"key": str, "agent": str, "ts": float, "request_id": str})
    hits.create_index(["key", "agent", "ts"])


def _migration_2(db: sqlite_utils.Database) -> None:
    """Which credential the proxy injected into each request (by name; never the secret)."""
    db.table("requests").add_column("credential", str)


def _migration_3(db: sqlite_utils.Database) -> None:
    """Undo: each row's undo class, the request a compensation undoes, and the journal of undo steps."""
    requests = db.table("requests")
    requests.add_column("undo_class", str)
    requests.add_column("undo_of", str)
    requests.create_index(["undo_of"])
    journal = db.table("undo_journal")
    journal.create({"seq": int, "request_id": str, "step": int, "state": str, "ts": float, "detail": str,
                    "compensation_id": str}, pk="seq")
    journal.create_index(["request_id", "step"])


def _migration_4(db: sqlite_utils.Database) -> None:
    """The pre-image: what the resource looked like before a mutating request, read by the proxy for undo."""
    requests = db.table("requests")
    for column, kind in (("pre_status", int), ("pre_headers", str), ("pre_body", bytes), ("pre_body_size", int)):
        requests.add_column(column, kind)


def _migration_5(db: sqlite_utils.Database) -> None:
    """The supervising model: every question asked of it and its answer (`execute`, `undo --propose`), and what the
    person chose to do with it."""
    calls = db.table("model_calls")
    calls.create({"seq": int, "ts": float, "kind": str, "agent": str, "subject": str, "model": str, "base_url": str,
                  "messages": str, "reply": str, "error": str, "code": str, "exit_code": int, "rows": str,
                  "choice": str}, pk="seq")
    calls.create_index(["subject"])


def _migration_6(db: sqlite_utils.Database) -> None:
    """Jailed runs that changed files in their workspace, and each path they changed (kinds, modes, sizes, sha256)."""
    runs = db.table("file_runs")
    runs.create({"seq": int, "id": str, "agent": str, "ts": float, "ended": float, "workspace": str, "command": str,
                 "exit_code": int, "changes": int, "state": str, "decided": float}, pk="seq")
    runs.create_index(["id"], unique=True)
    runs.create_index(["agent", "ts"])
    changes = db.table("file_changes")
    entry = {"kind": str, "mode": int, "size": int, "sha256": str, "target": str}
    columns: dict[str, Any] = {"seq": int, "run_id": str, "idx": int, "path": str, "action": str}
    columns.update({f"{side}_{k}": v for side in ("before", "after") for k, v in entry.items()})
    changes.create(columns, pk="seq")
    changes.create_index(["run_id", "idx"])


def _migration_7(db: sqlite_utils.Database) -> None:
    """The chain is keyed (HMAC): `open_db` re-signs every row under the seal's key in this migration's transaction.
    Each row also carries, under its hash, the limit hits it was charged (`charged`), so `limit_hits` can be checked."""
    if "charged" not in db.table("requests").columns_dict:  # a log whose version was set back already has it
        db.table("requests").add_column("charged", str)


def _migration_8(db: sqlite_utils.Database) -> None:
    """Approvals: requests that waited for a person (held) or a delay, or passed to be reviewed, and what became of
    them (`approval` on the row, under its outcome hash); the one-time links notifications carry."""
    if "approval" not in db.table("requests").columns_dict:  # a log whose version was set back already has it
        db.table("requests").add_column("approval", str)
    if db.table("approvals").exists():
        return
    approvals = db.table("approvals")
    approvals.create({"request_id": str, "ts": float, "agent": str, "kind": str, "state": str, "deadline": float,
                      "on_timeout": str, "undo_class": str, "why": str, "card": str, "owner": str, "decided_by": str,
                      "decided_at": float, "reason": str, "charged": str, "reviewed_at": float, "reviewed_by": str},
                     pk="request_id")
    approvals.create_index(["state", "ts"])
    approvals.create_index(["kind", "reviewed_at", "ts"])
    links = db.table("approval_links")
    links.create({"token_sha256": str, "request_id": str, "action": str, "expires": float, "used_at": float},
                 pk="token_sha256")
    links.create_index(["request_id"])


def _migration_9(db: sqlite_utils.Database) -> None:
    """The console's log page: newest first by `seq` with one filter, an index per filter column that ends in `seq`,
    so that a page reads its 50 rows from the top of the index (the (agent, ts) and (host, ts) indexes cannot give
    seq's order, so they sort every matching row; a filter on decision or undo class scanned the whole table when
    few or no rows match). Measured with `python bench/run.py --only console` (bench/README.md)."""
    requests = db.table("requests")
    for columns in (["agent", "seq"], ["host", "seq"], ["decision", "seq"], ["undo_class", "seq"]):
        requests.create_index(columns, if_not_exists=True)  # a log whose version was set back already has them


def _migration_10(db: sqlite_utils.Database) -> None:
    """The console's sign-in links (each token stored hashed, good once and until it expires, so that `goex-proxy
    console link` can make one for a console that runs), and the `execute` run each model call belongs to (the seq of
    the run's first call), so that the console groups a run's calls exactly."""
    if "run" not in db.table("model_calls").columns_dict:  # a log whose version was set back already has it
        db.table("model_calls").add_column("run", int)
        db.table("model_calls").create_index(["run"], if_not_exists=True)
    if not db.table("console_links").exists():
        db.table("console_links").create({"token_sha256": str, "made": float, "expires": float, "used_at": float},
                                         pk="token_sha256")


def _migration_11(db: sqlite_utils.Database) -> None:
    """Pruning (`audit.retention`, `goex-proxy log prune`): each run of removed rows leaves a gap record, keyed by the
    kept row after it and signed under the chain key, that `log verify` checks the chain across."""
    if not db.table("audit_gaps").exists():
        db.table("audit_gaps").create({"next_seq": int, "first_seq": int, "last_seq": int, "rows": int,
                                       "before_hash": str, "last_hash": str, "at": float, "mac": str}, pk="next_seq")


def _migration_12(db: sqlite_utils.Database) -> None:
    """A smaller log (`layout`): headers and bodies in `audit_blobs`, compressed, stored once while they repeat and
    counted by the rows that name them; hashes as bytes; values a row's other fields give left out; the unused index
    on undo_of dropped. Rows already
    written stay as they are (both layouts read back the same): rewriting a 10 GB log here would hold every writer for
    as long, need as much again in its WAL, and give nothing back to the disk without a VACUUM."""
    requests = db.table("requests")
    have = requests.columns_dict
    for column in layout.BLOB_COLUMNS:
        if column not in have:  # a log whose version was set back already has them
            requests.add_column(column, int)
    if not db.table(blobs.TABLE).exists():  # AUTOINCREMENT: a blob id once committed never names another blob
        db.execute(f"CREATE TABLE {blobs.TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB, refs INTEGER)")
    # No query looks rows up by undo_of (undo finds a row's undos through its journal): its index only took room.
    db.execute("DROP INDEX IF EXISTS idx_requests_undo_of")


def _migration_13(db: sqlite_utils.Database) -> None:
    """The rows still in flight (no outcome yet), indexed apart: a starting writer finds those of processes that ended
    without recording their outcome (killed, crashed) by reading only them."""
    db.execute("CREATE INDEX IF NOT EXISTS idx_requests_in_flight ON requests (seq) WHERE outcome_hash IS NULL")


def _migration_14(db: sqlite_utils.Database) -> None:
    """The database gateway's held transactions (`transaction: hold`): one row each, its state, and a person's
    request to commit or roll it back, which the gateway process holding its connection polls for and carries out
    (`db.holdstore`)."""
    if not db.table("db_holds").exists():
        db.table("db_holds").create({"id": str, "database": str, "agent": str, "created": float, "started": float,
                                     "statements": int, "state": str, "request": str, "requested_by": str,
                                     "requested_at": float, "decided_by": str, "ended": float, "result": str},
                                    pk="id")
        db.table("db_holds").create_index(["state"])


def _migration_15(db: sqlite_utils.Database) -> None:
    """The images of the rows a captured SQL statement changed (db.rowcapture), which undo restores: an outcome
    field, covered by the outcome hash when set."""
    requests = db.table("requests")
    if "row_images" not in requests.columns_dict:
        requests.add_column("row_images", bytes)


def _migration_16(db: sqlite_utils.Database) -> None:
    """The undos of a request found from the chained log, not only from the undo journal (which is not chained): an
    index of the few rows that are undos."""
    db.execute("CREATE INDEX IF NOT EXISTS idx_requests_undos ON requests (undo_of) WHERE undo_of IS NOT NULL")


def _migration_17(db: sqlite_utils.Database) -> None:
    """A blob may be deflated on top of another (`blobs`: a row's headers or body, on the last ones its host gave for
    that method), which it names in `base` and which counts it as one more naming it."""
    if "base" not in db.table(blobs.TABLE).columns_dict:  # a log whose version was set back already has it
        db.execute(f"ALTER TABLE {blobs.TABLE} ADD COLUMN base INTEGER")


#: The decision most rows have: the index of decisions leaves those rows out (a page of them is read by time, through
#: the blocks of time, where they are most rows), and a filter on another decision says so to use it. Rows hold it as
#: `layout.DERIVED` since migration 23, and as its name before.
COMMON_DECISION = layout.COMMON["decision"]
NOT_COMMON_DECISION = f"decision != '{COMMON_DECISION}' AND decision != x''"
#: The index of decisions before migration 23 (rows left the common decision out since, which this one would hold).
_NOT_COMMON_DECISION_V18 = f"decision != '{COMMON_DECISION}'"


def decision_terms(decision: str | None, plus: str = "") -> tuple[list[str], list[Any]]:
    """SQL terms true of the rows with this decision (none for None), and their parameters: the common decision
    matches rows that hold its name and rows that leave it out; another one adds the index of decisions' condition
    (a partial index is used only for a query that names it), unless `plus` keeps the terms from any index."""
    if decision is None:
        return [], []
    if decision == COMMON_DECISION:
        return [f"{plus}decision IN (?, ?)"], [decision, layout.DERIVED]
    return [f"{plus}decision = ?"] + ([NOT_COMMON_DECISION] if not plus else []), [decision]


def _migration_18(db: sqlite_utils.Database) -> None:
    """Rows are listed by time everywhere (the console's pages as `log`), so each filter has one index, ending in ts
    (and the row's seq, which every index holds): migration 9's (agent, seq) and (host, seq) twins of (agent, ts) and
    (host, ts) go. The indexes of decisions and undo classes hold only the rows a filter needs them for: those not
    allowed, and those with an undo class (a read has none). At a million rows the four held 84 of 699 bytes a row;
    building the two reads the table once."""
    for name in ("agent_seq", "host_seq", "decision_seq", "undo_class_seq"):
        db.execute(f"DROP INDEX IF EXISTS idx_requests_{name}")
    db.execute(f"CREATE INDEX IF NOT EXISTS idx_requests_decision_ts ON requests (decision, ts) "
               f"WHERE {_NOT_COMMON_DECISION_V18}")
    db.execute("CREATE INDEX IF NOT EXISTS idx_requests_undo_class_ts ON requests (undo_class, ts) "
               "WHERE undo_class IS NOT NULL")


def _migration_19(db: sqlite_utils.Database) -> None:
    """Room for a row's outcome (`layout.ROOM`): zero bytes written with a row that has none yet and dropped when it
    comes, so that a row keeps its size. A row that grew in place split the page it was on, which most often was
    full (rows are appended), and left a sixth of each page of the table empty."""
    if "room" not in db.table("requests").columns_dict:  # a log whose version was set back already has it
        db.table("requests").add_column("room", bytes)


def _migration_20(db: sqlite_utils.Database) -> None:
    """Each row's agent and host as the id of its name (`names`): the names once in `audit_names`, a row holding a
    one-byte id where it held the name, in the table and again in its (agent, ts) and (host, ts) index. Measured with
    `python bench/run.py --only audit-size` at a million rows (bench/README.md): 567 → 523 bytes a row built at once
    (the table 276 → 256, the two indexes 62 → 38), 623 → 572 for a log grown by the writer.

    Rows already written keep their names (both read back the same, as with migration 12): rewriting a large log
    here would hold every writer until it was done. A filter matches both (`names.term`).

    The table is outside the chain, and that is safe: a row's hash covers its agent and host as names (`layout`
    reads the name back before anything hashes the row), so a name edited in the table, or an id that names nothing,
    makes every row holding it fail `log verify`, as an edited row would. The names are no secrets (the rows held
    them before). A prune removes the names no kept row holds, but never the newest id, so an id never names another
    (`names.release`)."""
    db.execute(f"CREATE TABLE IF NOT EXISTS {names.TABLE} (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")


def _migration_21(db: sqlite_utils.Database) -> None:
    """A new log's table without the columns schema 12 emptied (headers, bodies, rule and reason, kept in blobs since):
    each took a byte of every row's record header. A log that has rows keeps them (rows written before schema 12 hold
    their values there, and dropping a column rewrites every row), as does an SQLite older than 3.35, which cannot
    drop a column; readers and the writer take both tables (`present_columns`)."""
    if db.execute("SELECT 1 FROM requests LIMIT 1").fetchone():
        return
    present = present_columns(db.conn)
    for column in layout.BLOB_FIELDS:
        if column in present:
            try:
                db.execute(f"ALTER TABLE requests DROP COLUMN {column}")
            except sqlite3.OperationalError:  # an SQLite before 3.35, or another process dropped it first
                continue


def _migration_22(db: sqlite_utils.Database) -> None:
    """The names again, without regard to case (`names.hosts_stored_as`): a filter on a host finds every spelling
    of it that policies read as the same host (`NOTES.example.` for notes.example) through this index, not by
    reading every name."""
    db.execute(f"CREATE INDEX IF NOT EXISTS idx_{names.TABLE}_nocase ON {names.TABLE} (name COLLATE NOCASE)")


def _migration_23(db: sqlite_utils.Database) -> None:
    """Two values most rows hold, in less room (`layout`): the request id as the 8 bytes of the number it spells
    (13 characters before; its index shrinks too), and the decision `allow` left out (`layout.DERIVED`). Measured
    with `python bench/run.py --only audit-size` at a million rows: 10 and 5 bytes a row. Rows already written keep
    both as text (both read back the same, as with migration 20): a lookup by id and a filter on `allow` match both
    forms. The index of decisions is built again: its condition must leave out the rows that leave `allow` out
    (building it reads the table once)."""
    db.execute("DROP INDEX IF EXISTS idx_requests_decision_ts")
    db.execute(f"CREATE INDEX idx_requests_decision_ts ON requests (decision, ts) WHERE {NOT_COMMON_DECISION}")


def _migration_24(db: sqlite_utils.Database) -> None:
    """Rows found by time through the earliest and latest start of each block of 1,024 seqs (`times`), not through
    an index of every row's time: 17 bytes a row at a million rows. The blocks are kept by triggers and filled here
    from the rows (one read of the table); an unfiltered page of `log` or the console reads the newest block or two.
    Filters on an agent, a host, a decision other than allow or an undo class keep their own index."""
    times.create(db.conn)
    db.execute("DROP INDEX IF EXISTS idx_requests_ts")


def _migration_25(db: sqlite_utils.Database) -> None:
    """The index of each filter (an agent, a host, a decision other than allow, an undo class) without the row's
    start: a listing bounds its rows to the blocks of time that can hold them (`times.window`, as a listing by time
    alone since migration 24) and reads each filter's index by seq within them, which every index holds. The start
    took 8 bytes of each entry: about 20 bytes a row at a million rows (`python bench/run.py --only audit-size`)."""
    for old in ("agent_ts", "host_ts", "decision_ts", "undo_class_ts"):
        db.execute(f"DROP INDEX IF EXISTS idx_requests_{old}")
    db.execute("CREATE INDEX IF NOT EXISTS idx_requests_agent ON requests (agent)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_requests_host ON requests (host)")
    db.execute(f"CREATE INDEX IF NOT EXISTS idx_requests_decision ON requests (decision) WHERE {NOT_COMMON_DECISION}")
    db.execute("CREATE INDEX IF NOT EXISTS idx_requests_undo_class ON requests (undo_class) "
               "WHERE undo_class IS NOT NULL")


def present_columns(conn: sqlite3.Connection) -> set[str]:
    """The columns the requests table has (a log not yet migrated lacks some; a new one lacks those of `BLOB_FIELDS`)."""
    return {r[1] for r in conn.execute("PRAGMA table_info(requests)")}


#: Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
MIGRATIONS = [_migration_1, _migration_2, _migration_3, _migration_4, _migration_5, _migration_6, _migration_7,
              _migration_8, _migration_9, _migration_10, _migration_11, _migration_12, _migration_13,
              _migration_14, _migration_15, _migration_16, _migration_17, _migration_18,
              _migration_19, _migration_20, _migration_21, _migration_22, _migration_23,
              _migration_24, _migration_25]
#: From this version on the chain is HMAC-SHA256 under the seal's key; before it, plain SHA-256.
KEYED_VERSION = 7
#: Request fields added by later migrations: hashed only when set, so rows written before them still verify.
OPTIONAL_REQUEST_FIELDS = ("credential", "undo_of", "pre_status", "pre_headers", "pre_body", "pre_body_size",
                           "charged")


def connect(config: Config | AuditSettings, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the configured audit database with the seal kept in the state directory."""
    return open_db(config.audit_db, seal=Seal(config.state_dir), readonly=readonly)


def open_db(path: Path, *, seal: Seal | None = None, readonly: bool = False) -> sqlite3.Connection:
    """Open the audit database (WAL), applying any pending migration unless read-only (writing needs the seal)."""
    if seal is None and not readonly:
        raise ValueError("opening the audit log for writing needs its seal")
    try:
        if readonly:
            if not _exists(path):
                raise AuditError(f"no audit database at {path}; has `goex-proxy run` recorded anything yet?")
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"cannot create {path.parent} for the audit database: {exc.strerror or exc}") from None
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        path.chmod(0o600)
        _migrate(conn, seal)  # type: ignore[arg-type]  # not None when writing
        return conn
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open audit database {path}: {exc}") from None


def _exists(path: Path) -> bool:
    """Whether the file is there; an AuditError saying why when the system cannot even look (a name too long, a
    directory the person may not enter), which `Path.exists` raises as an OSError (an internal error of `log`)."""
    try:
        return path.exists()
    except OSError as exc:
        raise AuditError(f"cannot look for the audit database {path}: {exc.strerror or exc}") from None


#: A log this long is told about before it is upgraded (a migration that builds an index reads every row).
LARGE_LOG_ROWS = 1_000_000


def _migrate(conn: sqlite3.Connection, seal: Seal) -> None:
    """Apply pending migrations; make sure the chain key exists for a log that will be written under it."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= KEYED_VERSION and seal.key() is None and conn.execute("SELECT 1 FROM requests LIMIT 1").fetchone():
        raise AuditError(f"the audit chain key {seal.key_path} is missing, so new rows could not be chained to the "
                         "log's; restore it (from a backup of the state directory) or move the audit database aside")
    if version > len(MIGRATIONS):  # its rows may hold what this version would misread, and write over wrongly
        raise AuditError(f"the audit database was written by a newer goex-proxy (schema {version}; this one knows "
                         f"up to {len(MIGRATIONS)}): upgrade goex-proxy to write to it")
    if version == len(MIGRATIONS):
        return
    import sqlite_utils  # only migrations need it; read-only commands should start fast

    rows = conn.execute("SELECT max(seq) FROM requests").fetchone()[0] if version else None
    if rows and rows >= LARGE_LOG_ROWS:  # building an index reads the whole table, holding every writer meanwhile
        log.warning("upgrading the audit log (%s rows) from schema %d to %d; this is done once and may take about a "
                    "minute for every ten million rows", f"{rows:,}", version, len(MIGRATIONS))
    db = sqlite_utils.Database(conn)
    for number, migrate in enumerate(MIGRATIONS[version:], start=version + 1):
        with conn:
            migrate(db)
            if number == KEYED_VERSION:
                _rechain(conn, seal)
            conn.execute(f"PRAGMA user_version = {number}")


def _rechain(conn: sqlite3.Connection, seal: Seal) -> None:
    """Re-sign a log written with plain SHA-256 under a fresh chain key, once its plain chain verifies."""
    if seal.anchor() is not None:
        raise AuditError(f"the audit log is new or says an older version wrote it, but {seal.anchor_path} anchors a "
                         "keyed log: rows were removed or the log replaced; `goex-proxy log verify` says more (if you "
                         "removed the log on purpose, remove the anchor too)")
    if seal.key() is not None and conn.execute("SELECT 1 FROM requests LIMIT 1").fetchone():
        raise AuditError(f"the audit log says an older version wrote it, but the chain key {seal.key_path} exists, so "
                         "this log has been keyed before (or is not this state directory's); `goex-proxy log verify` "
                         "checks it, and a log moved aside lets a new one start")
    result = verify(conn, None)
    if result.broken_id is not None:
        raise AuditError(f"the audit log was already broken before its chain was keyed, at row {result.broken_id} "
                         f"(seq {result.broken_seq}): {result.problem}; move it aside to start a new one")
    key = seal.key(create=True)
    hits: dict[str, list[tuple[str, float]]] = {}
    for key_, ts, request_id in conn.execute("SELECT key, ts, request_id FROM limit_hits ORDER BY rowid"):
        hits.setdefault(request_id, []).append((key_, ts))
    prev, head = "", None
    for row in list(iter_rows(conn)):
        if row["id"] in hits:
            row["charged"] = charged([k for k, _ in hits[row["id"]]], hits[row["id"]][0][1])
            conn.execute("UPDATE requests SET charged = ? WHERE seq = ?", (row["charged"], row["seq"]))
        signed = {"prev_hash": prev, "hash": row_hash(key, prev, row)}
        if row["outcome_hash"] is not None:
            signed["outcome_hash"] = outcome_hash(key, signed["hash"], row)
        conn.execute("UPDATE requests SET prev_hash = ?, hash = ?, outcome_hash = ? WHERE seq = ?",
                     (signed["prev_hash"], signed["hash"], signed.get("outcome_hash"), row["seq"]))
        prev, head = signed["hash"], Anchor(row["seq"], row["id"], signed["hash"])
    with seal.locked():
        seal.set_anchor(head)


#: `json.dumps(..., separators=(",", ":"), default=str)`, made once: the writer signs two texts a request, and
#: `log verify` as many a row.
_CANONICAL = json.JSONEncoder(separators=(",", ":"), default=str)


def _canonical(row: dict[str, Any], fields: tuple[str, ...]) -> bytes:
    """What a hash signs of these fields of a row: their values in order as compact JSON, bytes as their SHA-256."""
    return _CANONICAL.encode([{"sha256": hashlib.sha256(v).hexdigest()} if isinstance(v := row.get(f), bytes) else v
                              for f in fields]).encode()


def _row_signed(prev_hash: str, row: dict[str, Any]) -> bytes:
    """What a row's hash signs: the hash before it, then its request fields."""
    fields = REQUEST_FIELDS + tuple(f for f in OPTIONAL_REQUEST_FIELDS if row.get(f) is not None)
    return prev_hash.encode() + _canonical(row, fields)


def _outcome_signed(keyed: bool, hash_: str, row: dict[str, Any]) -> bytes:
    """What an outcome's hash signs: its row's hash, then its fields; a keyed chain also covers what undo could do
    for it (`undo_class`) and, for a request that waited, what became of the wait (`approval`)."""
    fields: tuple[str, ...] = OUTCOME_FIELDS + ("undo_class",) if keyed else OUTCOME_FIELDS
    fields += tuple(f for f in OUTCOME_EXTRAS[1:] if row.get(f) is not None)
    return hash_.encode() + _canonical(row, fields)


def row_hash(key: bytes | None, prev_hash: str, row: dict[str, Any]) -> str:
    """The hash a row is written with (`seal.chain_tag`)."""
    return chain_tag(key, _row_signed(prev_hash, row))


def outcome_hash(key: bytes | None, hash_: str, row: dict[str, Any]) -> str:
    """The hash an outcome is written with, bound to its row's."""
    return chain_tag(key, _outcome_signed(key is not None, hash_, row))


def load_limit_hits(conn: sqlite3.Connection, windows: dict[str, float | None], now: float) -> Iterator[tuple[str, str, float]]:
    """The hits that still count for each limited rule, oldest first."""
    for key, per in windows.items():
        since = now - per if per is not None else 0.0
        yield from conn.execute(
            "SELECT key, agent, ts FROM limit_hits WHERE key = ? AND ts > ? ORDER BY ts", (key, since))


def query(conn: sqlite3.Connection, *, agent: str | None = None, host: str | None = None, since: float | None = None,
          decision: str | None = None, limit: int | None = 50, order: str = "DESC") -> list[dict[str, Any]]:
    """Rows matching the filters, newest first (without bodies)."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("agent", agent), ("host", host)):
        if value is not None:  # a name, or the id of one (`names`): both through the column's index
            term, values = names.term(conn, column, layout.stored_text(value))
            where.append(term)
            params += values
    terms, values = decision_terms(decision)
    where += terms
    params += values
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    with one_snapshot(conn):  # the blocks of time and their rows as of one moment
        return _by_time(conn, where, params, limit, order, since)


def _by_time(conn: sqlite3.Connection, where: list[str], params: list[Any], limit: int | None, order: str,
             since: float | None) -> list[dict[str, Any]]:
    """`query`'s rows, read only in the blocks of time that can hold them (`times.window`; a log not yet migrated
    to them reads its index of every row's time)."""
    if times.present(conn):
        terms, values = times.window(conn, where, params, limit, newest_first=order == "DESC", since=since)
        where, params = where + terms, params + values
    columns = ("id, ts, agent, method, scheme, host, port, path, url, decision, report, status, "
               "error, duration_ms, ended, req_body_size, resp_body_size")  # ended: a duration may be left to it
    present = present_columns(conn)
    columns += "".join(f", {c}" for c in ("rule", "reason", "credential", "undo_class", "undo_of", "rule_blob",
                                          "reason_blob")
                       if c in present)  # the rule and reason of rows written since schema 12 are in blobs
    sql = f"SELECT {columns} FROM requests"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY ts {order}, seq {order}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return list(layout.read(conn, sql, params))


def get(conn: sqlite3.Connection, request_id: str, *, lenient: bool = False) -> dict[str, Any]:
    """One row, whole and as written (its headers and bodies read back from their blobs); `lenient`: a value that
    cannot be read reads as `layout.unreadable` says, instead of raising AuditError."""
    term, forms = layout.id_term(request_id)
    for found in layout.read(conn, f"SELECT * FROM requests WHERE {term}", forms, lenient=lenient):
        return found
    raise NotFound(f"no request with id {request_id!r} in the audit log")


#: How much later than its `ts` (the request's start) a row may be written: after the pre-image read, a hold, a slow
#: upstream. Every row that began by a time was written before the first row that began this long after it, so a walk
#: down seq can start there (the console's `until` filter, a prune's end); a clock set back by more than this could
#: hide a row from such a walk (`goex-proxy log` reads by ts alone).
WRITE_SLACK_S = 86400.0


def first_seq_after(conn: sqlite3.Connection, ts: float) -> int | None:
    """The seq of the first row (by ts, through its index) that began more than WRITE_SLACK_S after `ts`: every row
    that began by `ts` has a smaller seq. None: no row began that late."""
    after = ts + WRITE_SLACK_S
    with one_snapshot(conn):  # the blocks of time and their rows as of one moment
        terms, values = times.window(conn, ["ts > ?"], [after], 1, newest_first=False, since=after) \
            if times.present(conn) else ([], [])
        found = conn.execute(f"SELECT seq FROM requests WHERE {' AND '.join(['ts > ?', *terms])} ORDER BY ts "
                             "LIMIT 1", [after, *values]).fetchone()
    return None if found is None else int(found[0])


def row_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])


def newest(conn: sqlite3.Connection) -> Anchor | None:
    """The newest row of the chain, as an anchor to keep elsewhere; None for an empty log."""
    found = conn.execute("SELECT seq, id, hash FROM requests ORDER BY seq DESC LIMIT 1").fetchone()
    return Anchor(int(found[0]), str(layout.id_read(found[1])), str(hex_of(found[2]))) if found else None


def last_injected(conn: sqlite3.Connection) -> dict[str, float]:
    """When each credential was last injected into a request, by credential name."""
    return dict(conn.execute("SELECT credential, max(ts) FROM requests WHERE credential IS NOT NULL "
                             "GROUP BY credential").fetchall())


def iter_rows(conn: sqlite3.Connection, *, lenient: bool = False) -> Iterator[dict[str, Any]]:
    """Every row in seq order, whole and as written; `lenient`: a value that cannot be read (a blob removed or
    damaged) reads as one that fails the chain check, instead of stopping the walk (as `verify` needs)."""
    return layout.read(conn, "SELECT * FROM requests ORDER BY seq", lenient=lenient, consecutive=True)


@dataclass(frozen=True)
class VerifyResult:
    """How many rows were checked, the first one that is broken if any, and how the chain was checked."""

    checked: int
    broken_id: str | None = None
    broken_seq: int | None = None
    problem: str | None = None
    keyed: bool = True
    anchored: bool = False
    pruned: int = 0  # rows removed by `log prune`, each run joined by a signed gap record


def charged(keys: Iterable[str], at: float) -> str:
    """A row's `charged` field: the limited rules it counted against and when (what its `limit_hits` rows say)."""
    return json.dumps({"keys": list(keys), "at": at}, separators=(",", ":"))


def _limit_hits_problem(conn: sqlite3.Connection, expected: Counter[tuple[str, Any, str, float]], through: int
                        ) -> tuple[str, str] | None:
    """The first disagreement between `limit_hits` and the charges the chained rows carry (a charge may name a rule
    more than once: a message of several SQL statements), the agent of each hit its row's (a cap counts an agent's
    hits: one moved to another agent counts for neither as charged): (row id, problem). Hits of rows after seq
    `through` are not looked at: those rows were written (by a running proxy) after the check read its rows; nor
    are the missing hits of rows no longer there (a prune took both since; a removal is the chain's to catch)."""
    for key, agent, ts, request_id in conn.execute("SELECT key, agent, ts, request_id FROM limit_hits ORDER BY rowid"):
        if expected[(request_id, agent, key, ts)] > 0:
            expected[(request_id, agent, key, ts)] -= 1
        elif not _row_after(conn, request_id, through):  # a hit of a row the check read no charge of
            return request_id, (f"a limit hit of rule {key!r} for agent {agent!r} matches no charge its row carries "
                                "(limit_hits was edited)")
    for (request_id, _, key, _), left in sorted(expected.items(), key=repr):
        # A row a prune (run's retention) removed after the check read it goes with its hits: no edit.
        if left > 0 and _seq_of(conn, request_id) is not None:
            return request_id, f"its limit hit of rule {key!r} is gone (limit_hits was edited: limits would count less)"
    return None


def _seq_of(conn: sqlite3.Connection, request_id: Any) -> int | None:
    """The seq of the row with this id (None: there is none)."""
    if not isinstance(request_id, str):  # never as written: limit_hits was edited
        return None
    term, forms = layout.id_term(request_id)
    found = conn.execute(f"SELECT seq FROM requests WHERE {term}", forms).fetchone()
    return None if found is None else int(found[0])


def _row_after(conn: sqlite3.Connection, request_id: Any, through: int) -> bool:
    """Whether this id names a row past seq `through` (written after the check read its rows)."""
    seq = _seq_of(conn, request_id)
    return seq is not None and seq > through


def _released_charge(conn: sqlite3.Connection, row: dict[str, Any]) -> dict[str, Any] | None:
    """What a request that waited was charged when it was let go: under its outcome hash once it ended, or, while it
    is still in flight, what its approvals entry says (the hits were written with it, before it was sent)."""
    if row.get("approval"):
        return json.loads(row["approval"]).get("charged")  # type: ignore[no-any-return]
    if row.get("outcome_hash") is None and row.get("decision") in ("hold", "delay"):
        found = conn.execute("SELECT charged FROM approvals WHERE request_id = ?", (row["id"],)).fetchone()
        return json.loads(found[0]) if found and found[0] else None
    return None


def chain_key(conn: sqlite3.Connection, seal: Seal) -> bytes | None:
    """The key this log's chain is signed with: None for a log an older version wrote (plain SHA-256) before any key
    existed. Once the state directory has a key, the log is checked under it whatever its schema version says (whoever
    can write the database can set that version back to make a plain chain pass)."""
    key = seal.key()
    if key is None and conn.execute("PRAGMA user_version").fetchone()[0] >= KEYED_VERSION:
        raise AuditError(f"the audit chain key {seal.key_path} is missing, so the chain cannot be checked")
    return key


def miscounted(conn: sqlite3.Connection) -> tuple[Any, Any, int, str, int] | None:
    """`layout.miscounted`, none in a log older than its blobs (read-only, not migrated)."""
    try:
        return layout.miscounted(conn)
    except sqlite3.OperationalError:  # no audit_blobs table, no blob columns
        return None


def miscount(counted: tuple[Any, Any, int, str, int]) -> str:
    """What a blob count that does not hold means, in a sentence."""
    ref, count, named = counted[:3]
    return (f"blob {ref}, which it names, is counted for {count} row{'' if count == 1 else 's'} but {named} name it "
            "(rows or blob counts were edited: a prune removes a blob whose count reaches 0, while rows may name it)")


def edited(key: bytes | None, row: dict[str, Any]) -> str | None:
    """Why a row as read back is not what was written under this key, or None: its request fields against its hash
    (which covers its prev_hash too), its outcome against its outcome hash, no outcome fields without one. Whatever
    acts on a row (undo replays its bodies with the real credential) checks this first; `verify` checks the links."""
    if not isinstance(row["prev_hash"], str):  # bytes no hash is (`layout.hex_of`): never signed, and no text to sign
        return "its link to the row before is not a hash (the row was edited)"
    if not tag_holds(key, _row_signed(row["prev_hash"], row), row["hash"]):
        return "its request fields do not match its hash (the row was edited)"
    if row["outcome_hash"] is not None and not tag_holds(key, _outcome_signed(key is not None, row["hash"], row),
                                                         row["outcome_hash"]):
        return "its outcome fields do not match its outcome hash (the row was edited)"
    if row["outcome_hash"] is None and any(row.get(f) is not None
                                           for f in (*OUTCOME_FIELDS, *OUTCOME_EXTRAS)):
        return "it has outcome fields but no outcome hash (the row was edited)"
    return None


@dataclass
class Span:
    """What checking the rows of one range of seqs found: how many held, the first that does not (its id, seq and
    why), the rows pruned before them, the limit hits their charges name, and whether the anchor's row was there."""

    checked: int = 0
    broken: tuple[str, int, str] | None = None
    pruned: int = 0
    expected: Counter[tuple[str, Any, str, float]] = field(default_factory=Counter)  # (id, agent, rule, time)
    anchored: bool = False
    through: int = 0  # the last seq read (rows a running proxy writes later are not)


def verify_span(conn: sqlite3.Connection, key: bytes | None, anchor: Anchor | None, seqs: tuple[int, int] | None = None
                ) -> Span:
    """Check the rows of seqs [low, high) (all of them without `seqs`): each row's link to the row before it (or a
    signed gap record that joins them over pruned rows) and its hashes; stop at the first that does not hold."""
    with one_snapshot(conn):  # the gap records and the rows as of one moment
        return _check_rows(conn, key, anchor, seqs)


def _check_rows(conn: sqlite3.Connection, key: bytes | None, anchor: Anchor | None, seqs: tuple[int, int] | None
                ) -> Span:
    found = Span()
    joins = gaps(conn)
    if seqs is None:
        rows, prev = iter_rows(conn, lenient=True), ""
    else:
        rows = layout.read(conn, "SELECT * FROM requests WHERE seq >= ? AND seq < ? ORDER BY seq", seqs,
                           lenient=True, consecutive=True)
        prev = layout.hash_before(conn, seqs[0])
    for row in rows:
        problem = None
        if row["prev_hash"] != prev and gap_holds(key, joins.get(row["seq"]), prev, row["prev_hash"]):
            found.pruned += joins[row["seq"]].rows  # rows pruned before it, joined by a signed gap record
            prev = row["prev_hash"]
        if row["prev_hash"] != prev:
            problem = "its link to the previous row is broken (a row before it was removed or reordered)"
        elif (problem := edited(key, row)) is not None:
            pass
        elif anchor is not None and row["seq"] == anchor.seq:
            if (row["id"], row["hash"]) != (anchor.id, anchor.hash):
                problem = f"it is not the row the anchor recorded at seq {anchor.seq} (the log was rewritten)"
            found.anchored = True
        if problem:
            found.broken = (row["id"], row["seq"], problem)
            return found
        charge = json.loads(row["charged"]) if row.get("charged") else _released_charge(conn, row)
        if charge:
            found.expected.update((row["id"], row["agent"], k, charge["at"]) for k in charge["keys"])
        prev = row["hash"]
        found.checked += 1
        found.through = int(row["seq"])
    if seqs is not None:
        found.through = seqs[1] - 1
    return found


def verify(conn: sqlite3.Connection, key: bytes | None, anchor: Anchor | None = None,
           spans: Iterable[Span] | None = None) -> VerifyResult:
    """Recompute the chain; name the first row that was edited, removed or reordered. With an anchor (the newest row
    as recorded outside the database), rows removed from the end are caught too. `spans`: what `verify_span` found
    over consecutive ranges that together cover every row, in seq order (`parallel` checks them at once), instead of
    one pass here."""
    checked = pruned = through = 0
    anchored = anchor is None
    expected: Counter[tuple[str, Any, str, float]] = Counter()
    for span in spans if spans is not None else [verify_span(conn, key, anchor)]:
        checked += span.checked
        if span.broken is not None:
            return VerifyResult(checked, *span.broken, key is not None)
        pruned += span.pruned
        expected += span.expected
        anchored = anchored or span.anchored
        through = max(through, span.through)
    if key is not None and (found := _limit_hits_problem(conn, expected, through)) is not None:
        return VerifyResult(checked, found[0], None, found[1], True)
    if not anchored:
        assert anchor is not None
        return VerifyResult(checked, anchor.id, anchor.seq, "the anchor's row is gone (rows were removed from the end "
                            "of the log)", key is not None)
    if (counted := miscounted(conn)) is not None:
        return VerifyResult(checked, counted[3], counted[4], miscount(counted), key is not None)
    if times.present(conn) and (hidden := times.out_of_place(conn)) is not None:
        return VerifyResult(checked, str(layout.id_read(hidden[0])), hidden[1], "its start is not within its block's "
                            "times (audit_times was edited: `log` and the console could leave it out)", key is not None)
    return VerifyResult(checked, keyed=key is not None, anchored=anchor is not None, pruned=pruned)


def against_anchor(conn: sqlite3.Connection, whole: VerifyResult, anchor: Anchor) -> VerifyResult:
    """What `verify` says against `anchor` of a log it has just found whole (`whole`, against another anchor or
    none): the chain holds, so only the anchor's row is left to look at, not every row again."""
    row = next(layout.read(conn, "SELECT * FROM requests WHERE seq = ?", (anchor.seq,), lenient=True), None)
    if row is None:
        return VerifyResult(whole.checked, anchor.id, anchor.seq, "the anchor's row is gone (rows were removed from the "
                            "end of the log)", whole.keyed)
    if (row["id"], row["hash"]) != (anchor.id, anchor.hash):
        before = int(conn.execute("SELECT count(*) FROM requests WHERE seq < ?", (anchor.seq,)).fetchone()[0])
        return VerifyResult(before, row["id"], row["seq"], f"it is not the row the anchor recorded at seq {anchor.seq} "
                            "(the log was rewritten)", whole.keyed)
    return replace(whole, anchored=True)
