"""How the audit log stores rows (schema 12): headers and bodies as compressed blobs stored once while they repeat,
hashes as bytes, derived values left out; every reader gets what was written, `log verify` still catches an edit in
the new storage, a log written before reads and verifies the same, and pruning leaves no blob behind."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest

from goex_proxy.audit import blobs, layout
from goex_proxy.audit import prune as pruning
from goex_proxy.audit import seal as seal_module
from goex_proxy.audit import store as audit
from goex_proxy.audit.dictionary import DICTIONARIES, FROZEN, fingerprint
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.console import data as console_data
from goex_proxy.errors import AuditError
from goex_proxy.ids import RequestIds, packed

NOW = time.time()
HEADERS = json.dumps([["Host", "slack.com"], ["User-Agent", "python-httpx/0.28.1"], ["Accept", "*/*"],
                      ["Authorization", "Bearer <redacted>"], ["Content-Type", "application/json"]])
RESP_HEADERS = json.dumps([["Content-Type", "application/json; charset=utf-8"], ["Date", "Fri, 04 Dec 2026 10:00:00 GMT"]])


def intent(ids: RequestIds, i: int, **extra: Any) -> dict[str, Any]:
    """A request row with every field a real one can have, as addons/rows.py makes it."""
    body = json.dumps({"channel": "C0BOTS", "text": f"status update {i}"}).encode()
    pre = json.dumps({"id": i, "name": "before"}).encode()
    row = {"id": ids.new(NOW - 100 + i), "ts": NOW - 100 + i, "agent": "bot", "client": "127.0.0.1:40000",
           "method": "POST", "scheme": "https", "host": "slack.com", "port": 443, "path": f"/api/chat.postMessage?n={i}",
           "url": f"https://slack.com/api/chat.postMessage?n={i}", "http_version": "HTTP/1.1", "req_headers": HEADERS,
           "req_body": body, "req_body_size": len(body), "req_body_sha256": hashlib.sha256(body).hexdigest(),
           "decision": "allow", "rule": "slack/post", "reason": "allowed by rule 'post'", "report": None,
           "credential": "slack", "undo_of": None, "pre_status": 200, "pre_headers": RESP_HEADERS, "pre_body": pre,
           "pre_body_size": len(pre)}
    row.update(extra)
    return row


def outcome(i: int, body: bytes | None = None) -> dict[str, Any]:
    body = body if body is not None else json.dumps({"ok": True, "ts": f"1764000000.{i:06d}"}).encode()
    return {"status": 200, "resp_headers": RESP_HEADERS, "resp_body": body, "resp_body_size": len(body),
            "resp_body_sha256": hashlib.sha256(body).hexdigest(), "error": None, "ended": NOW - 99 + i,
            "duration_ms": 12.5, "undo_class": "exact"}


def write(home: Path, rows: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> None:
    writer = AuditWriter(home / "a.db", Seal(home))
    try:
        for row, done in rows:
            writer.record_intent(row).result(5)
            if done is not None:
                writer.record_outcome(str(row["id"]), done).result(5)
    finally:
        writer.close()


def ro(home: Path) -> sqlite3.Connection:
    return audit.open_db(home / "a.db", readonly=True)


def verify(home: Path) -> audit.VerifyResult:
    seal, conn = Seal(home), ro(home)
    try:
        return audit.verify(conn, audit.chain_key(conn, seal), seal.anchor())
    finally:
        conn.close()


def blob_of(home: Path, request_id: str, field: str) -> int:
    with sqlite3.connect(home / "a.db") as conn:
        return int(conn.execute(f"SELECT {field}_blob FROM requests WHERE id = ?", (packed(request_id),)).fetchone()[0])


def test_every_field_reads_back_as_written(tmp_path: Path) -> None:
    """get, iter_rows, query and the console's page give each field exactly as the writer was given it (types too),
    while the row itself holds none of the headers, bodies, URL or digests of a full body in their old form."""
    ids = RequestIds()
    row, done = intent(ids, 1), outcome(1)
    cut = intent(ids, 2, req_body=b"x" * 10, req_body_size=50, req_body_sha256=hashlib.sha256(b"y" * 50).hexdigest(),
                 port=8443, url="https://slack.com:8443/odd")  # a cut body; a URL not made of its parts
    write(tmp_path, [(row, done), (cut, None)])
    conn = ro(tmp_path)
    got = audit.get(conn, row["id"])
    assert {k: got[k] for k in (*row, *done)} == {**row, **done}
    assert isinstance(got["req_body"], bytes) and isinstance(got["req_headers"], str)
    assert not any(k.endswith("_blob") for k in got)
    got_cut = audit.get(conn, cut["id"])
    assert {k: got_cut[k] for k in cut} == cut and got_cut["resp_body"] is None
    assert (got["prev_hash"], got_cut["prev_hash"]) == ("", got["hash"])  # left out of the row, read from the one before
    assert [r["id"] for r in audit.iter_rows(conn)] == [row["id"], cut["id"]]
    assert next(audit.iter_rows(conn)) == got
    listed = {r["id"]: (r["url"], r["rule"], r["reason"]) for r in audit.query(conn)}
    assert listed == {r["id"]: (r["url"], r["rule"], r["reason"]) for r in (row, cut)}  # `log` lists rule: "-" before
    assert {r["id"]: (r["url"], r["rule"], r["reason"]) for r in console_data.page(conn, console_data.Filters())} \
        == listed
    assert not set(layout.BLOB_FIELDS) & audit.present_columns(conn)  # a new log has no column for them at all
    columns = ("url", "req_body_sha256", "resp_body_sha256", "prev_hash", "hash")
    stored = dict(zip(columns, conn.execute(f"SELECT {', '.join(columns)} FROM requests WHERE id = ?",
                                            (packed(cut["id"]),)).fetchone(), strict=True))
    assert stored == {"url": cut["url"], "req_body_sha256": bytes.fromhex(cut["req_body_sha256"]),
                      "resp_body_sha256": None, "prev_hash": b"", "hash": bytes.fromhex(got_cut["hash"])}
    assert conn.execute("SELECT url, req_body_sha256, resp_body_sha256 FROM requests WHERE id = ?",
                        (packed(row["id"]),)).fetchone() == (b"", b"", b"")
    assert verify(tmp_path).checked == 2


def test_a_repeated_value_is_stored_once(tmp_path: Path) -> None:
    """Two rows with the same headers and the same response body name one blob each, counted twice."""
    ids = RequestIds()
    same = b'{"ok": true}'
    write(tmp_path, [(intent(ids, 1), outcome(1, same)), (intent(ids, 2), outcome(2, same))])
    conn = ro(tmp_path)
    first, second = (r["id"] for r in audit.iter_rows(conn))
    for field in ("req_headers", "resp_headers", "resp_body", "pre_headers", "rule", "reason"):
        assert blob_of(tmp_path, first, field) == blob_of(tmp_path, second, field), field
    assert blob_of(tmp_path, first, "req_body") != blob_of(tmp_path, second, "req_body")
    refs = dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall())
    # req_headers, resp_body, rule, reason (2 each), resp_headers = pre_headers (4: the same text); each req_body and
    # pre_body once, the second on top of the first, which counts it too
    assert sorted(refs.values()) == [1, 1, 2, 2, 2, 2, 2, 2, 4]
    assert refs[blob_of(tmp_path, first, "resp_headers")] == 4
    for field in ("req_body", "pre_body"):
        based = conn.execute("SELECT base FROM audit_blobs WHERE id = ?", (blob_of(tmp_path, second, field),))
        assert based.fetchone()[0] == blob_of(tmp_path, first, field), field
    assert audit.get(conn, second)["resp_body"] == same


def test_verify_catches_an_edited_or_removed_blob(tmp_path: Path) -> None:
    """A blob rewritten (even well-formed) breaks the row that names it; one removed too, and reading that row then
    says so in one line instead of giving a wrong value."""
    ids = RequestIds()
    rows = [(intent(ids, i), outcome(i)) for i in range(3)]
    write(tmp_path, rows)
    victim = str(rows[1][0]["id"])
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE audit_blobs SET data = ? WHERE id = ?",
                     (blobs.encode(b'{"ok": false}'), blob_of(tmp_path, victim, "resp_body")))
    result = verify(tmp_path)
    assert (result.broken_id, result.checked) == (victim, 1) and "outcome" in (result.problem or "")

    home = tmp_path / "again"
    home.mkdir()
    rows = [(intent(ids, i), outcome(i)) for i in range(3)]
    write(home, rows)
    victim = str(rows[2][0]["id"])
    with sqlite3.connect(home / "a.db") as conn:
        conn.execute("DELETE FROM audit_blobs WHERE id = ?", (blob_of(home, victim, "req_body"),))
    result = verify(home)
    assert (result.broken_id, result.checked) == (victim, 2) and "request fields" in (result.problem or "")
    with pytest.raises(AuditError, match=f"req_body of row {victim} cannot be read"):
        audit.get(ro(home), victim)


def test_values_most_rows_share_or_their_other_fields_give_are_left_out_and_read_back(tmp_path: Path) -> None:
    """The scheme https, HTTP/1.1, the scheme's own port and a duration that is the row's end less its start (zero
    too) take no bytes in the row, written with the row or with an outcome that comes later, a loopback client takes
    two and an end after the start up to four; other values are kept as they are; each reads back the same (type
    too) through get, `log`'s query and the console's page, and an edit to one makes its row fail `verify`."""
    ids = RequestIds()
    common = intent(ids, 1)
    done = outcome(1) | {"duration_ms": layout.duration_of(common["ts"], NOW - 99 + 1)}
    rare = intent(ids, 2, scheme="http", port=8080, http_version="HTTP/2.0", url="http://slack.com:8080/x", path="/x",
                  client="127.0.0.1:08080")  # not as the proxy writes a port: kept as it is
    instant = {"error": "refused", "ended": rare["ts"], "duration_ms": 0.0}
    plain = intent(ids, 3, scheme="http", port=80, url="http://slack.com/y", path="/y", client="[::1]:40000")
    odd = outcome(3) | {"duration_ms": 12.5}  # not its end less its start: kept
    back = intent(ids, 4)
    backwards = outcome(4) | {"ended": back["ts"] - 0.5, "duration_ms": -500.0}  # the clock set back: its end kept
    write(tmp_path, [(common, None), (rare, instant), (plain, odd), (back, backwards)])  # the first left in flight:
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    writer.record_outcome(str(common["id"]), done).result(5)  # a later writer finds the row's start in the row
    writer.close()
    conn = ro(tmp_path)
    columns = ("scheme", "port", "http_version", "duration_ms", "client")
    stored = [dict(zip(columns, r, strict=True)) for r in conn.execute(
        f"SELECT {', '.join(columns)} FROM requests ORDER BY seq")]
    assert stored == [dict.fromkeys(columns, layout.DERIVED) | {"client": (40000).to_bytes(2, "big")},
                      {"scheme": "http", "port": 8080, "http_version": "HTTP/2.0", "duration_ms": layout.DERIVED,
                       "client": "127.0.0.1:08080"},
                      {"scheme": "http", "port": layout.DERIVED, "http_version": layout.DERIVED, "duration_ms": 12.5,
                       "client": "[::1]:40000"},
                      {"scheme": layout.DERIVED, "port": layout.DERIVED, "http_version": layout.DERIVED,
                       "duration_ms": layout.DERIVED, "client": (40000).to_bytes(2, "big")}]
    ends = [e for (e,) in conn.execute("SELECT ended FROM requests ORDER BY seq")]
    assert [type(e) for e in ends] == [bytes, bytes, bytes, float] and ends[1] == b"\x00"  # ticks after the start
    assert len(ends[0]) == len(ends[2]) == 3  # a second
    for row, out in ((common, done), (rare, instant), (plain, odd), (back, backwards)):
        got = audit.get(conn, str(row["id"]))
        assert {k: (got[k], type(got[k])) for k in (*row, *out)} == {k: (v, type(v)) for k, v in {**row, **out}.items()}
    listed = {r["id"]: tuple(r[k] for k in ("scheme", "port", "duration_ms", "url")) for r in audit.query(conn)}
    paged = {r["id"]: tuple(r[k] for k in ("scheme", "port", "duration_ms", "url"))
             for r in console_data.page(conn, console_data.Filters())}
    assert listed == paged == {r["id"]: (r["scheme"], r["port"], o["duration_ms"], r["url"])
                               for r, o in ((common, done), (rare, instant), (plain, odd), (back, backwards))}
    assert verify(tmp_path).broken_id is None
    for column, edit in (("ended", bytes(5)), ("ended", b"\x01"), ("client", b"\x01"), ("port", b"\x01")):
        with sqlite3.connect(tmp_path / "a.db") as raw:
            (was,) = raw.execute(f"SELECT {column} FROM requests WHERE id = ?", (packed(plain["id"]),)).fetchone()
            raw.execute(f"UPDATE requests SET {column} = ? WHERE id = ?", (edit, packed(plain["id"])))
        assert verify(tmp_path).broken_id == plain["id"], (column, edit)  # read as something never hashed
        with sqlite3.connect(tmp_path / "a.db") as raw:
            raw.execute(f"UPDATE requests SET {column} = ? WHERE id = ?", (was, packed(plain["id"])))
    assert verify(tmp_path).broken_id is None


def test_empty_headers_bodies_rules_and_reasons_read_back_empty_in_a_log_without_their_columns(tmp_path: Path) -> None:
    """A new log has no column of their own for headers, bodies, rule and reason (migration 21): an empty value is
    kept in a blob as any other, and reads back empty, not missing; a row without them reads them as None."""
    ids = RequestIds()
    empty = intent(ids, 1, req_body=b"", req_body_size=0, req_body_sha256=hashlib.sha256(b"").hexdigest(), rule="",
                   reason="", req_headers="[]")
    bare = intent(ids, 2, req_headers=None, req_body=None, rule=None, reason=None, pre_headers=None, pre_body=None)
    write(tmp_path, [(empty, outcome(1, b"") | {"resp_headers": ""}), (bare, None)])
    conn = ro(tmp_path)
    assert not set(layout.BLOB_FIELDS) & audit.present_columns(conn)
    got = audit.get(conn, str(empty["id"]))
    assert [(got[f], type(got[f])) for f in ("req_body", "rule", "reason", "req_headers", "resp_body", "resp_headers")] \
        == [(b"", bytes), ("", str), ("", str), ("[]", str), (b"", bytes), ("", str)]
    bare_got = audit.get(conn, str(bare["id"]))
    assert all(bare_got[f] is None for f in layout.BLOB_FIELDS)
    assert verify(tmp_path).broken_id is None


def test_a_duration_that_equals_its_derived_one_only_as_a_number_is_kept(tmp_path: Path) -> None:
    """A refused request's duration is written 0.0 with its end time.time(), which a clock stepped back can put a
    fraction of a microsecond before its start: its end less its start rounds to -0.0, equal to 0.0 as a number but
    not as the hash has it. Left out, it read back as -0.0 and the honest row failed verify (and undo)."""
    ids = RequestIds()
    row = intent(ids, 1)
    done = {"error": "refused: denied", "ended": math.nextafter(row["ts"], 0), "duration_ms": 0.0}
    assert repr(layout.duration_of(row["ts"], done["ended"])) == "-0.0"
    write(tmp_path, [(row, done)])
    got = audit.get(ro(tmp_path), str(row["id"]))
    assert repr(got["duration_ms"]) == "0.0"
    assert verify(tmp_path).broken_id is None


def test_a_log_written_before_reads_and_verifies_the_same_after_migrating(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows written by schema 11 (every value in its row, hashes as hex, whole 256-bit MACs) stay as they are through
    migration 12: they read back the same and verify, and new rows (128-bit MACs, as bytes) chain onto them."""
    ids = RequestIds()
    old = [(intent(ids, i), outcome(i)) for i in range(3)]
    with monkeypatch.context() as old_version:
        old_version.setattr(audit, "MIGRATIONS", audit.MIGRATIONS[:11])
        old_version.setattr(layout, "stored", lambda fields, put, kind=(), **_: dict(fields))
        old_version.setattr(layout, "OUTCOME_ROOM", b"")  # schema 11 had no room for outcomes
        old_version.setattr(seal_module, "TAG_HEX", 64)  # and kept its MACs whole
        write(tmp_path, old)
        conn = ro(tmp_path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 11
        before = [audit.get(conn, str(r["id"])) for r, _ in old]
        assert isinstance(before[0]["req_headers"], str) and len(before[0]["hash"]) == 64
    new = [(intent(ids, 10 + i), outcome(10 + i)) for i in range(2)]
    write(tmp_path, new)  # migrates, then writes the new layout after the old rows
    conn = ro(tmp_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(audit.MIGRATIONS) >= 12
    after = [audit.get(conn, str(r["id"])) for r, _ in old]
    assert [{k: v for k, v in r.items() if not k.endswith("_blob") and (k in before[0] or v is not None)}
            for r in after] == before  # columns of later migrations (row_images) read as None
    stored = conn.execute("SELECT typeof(req_headers), typeof(hash), req_headers_blob FROM requests ORDER BY seq"
                          ).fetchall()
    assert stored == [("text", "text", None)] * 3 + [("null", "blob", stored[3][2]), ("null", "blob", stored[4][2])]
    assert [length for (length,) in conn.execute("SELECT length(hash) FROM requests ORDER BY seq")] == [64] * 3 + [16] * 2
    assert set(layout.BLOB_FIELDS) <= audit.present_columns(conn)  # a log with rows keeps its columns (migration 21)
    for row, done in new:
        got = audit.get(conn, str(row["id"]))
        assert {k: got[k] for k in (*row, *done)} == {**row, **done}
    assert (verify(tmp_path).checked, verify(tmp_path).broken_id) == (5, None)


def test_a_rows_macs_are_cut_to_128_bits_and_neither_a_cut_nor_an_edit_goes_unseen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """New rows keep the first 128 bits of each HMAC (16 bytes a MAC in the row, 32 hex digits in the anchor). A
    changed bit of one fails its row; cutting a whole MAC written before is no way around the chain either: the row
    after it and its own outcome signed the whole one; and a plain SHA-256 chain (no key) takes no cut hash."""
    ids = RequestIds()
    rows = [(intent(ids, i), outcome(i)) for i in range(3)]
    write(tmp_path, rows)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("SELECT DISTINCT length(hash), length(outcome_hash) FROM requests").fetchall() == [(16, 16)]
    assert len(Seal(tmp_path).anchor().hash) == 32  # type: ignore[union-attr]
    assert verify(tmp_path).broken_id is None
    victim = str(rows[1][0]["id"])
    with sqlite3.connect(tmp_path / "a.db") as conn:
        for column in ("hash", "outcome_hash"):
            (was,) = conn.execute(f"SELECT {column} FROM requests WHERE id = ?", (packed(victim),)).fetchone()
            conn.execute(f"UPDATE requests SET {column} = ? WHERE id = ?", (bytes([was[0] ^ 1]) + was[1:], packed(victim)))
            conn.commit()
            result = verify(tmp_path)
            assert result.broken_id == victim, column
            conn.execute(f"UPDATE requests SET {column} = ? WHERE id = ?", (was, packed(victim)))
            conn.commit()
    assert verify(tmp_path).broken_id is None

    whole = tmp_path / "whole"
    whole.mkdir()
    monkeypatch.setattr(seal_module, "TAG_HEX", 64)  # as rows written before the cut
    rows = [(intent(ids, 10 + i), outcome(10 + i)) for i in range(3)]
    write(whole, rows)
    monkeypatch.undo()
    assert verify(whole).broken_id is None
    with sqlite3.connect(whole / "a.db") as conn:
        assert conn.execute("SELECT DISTINCT length(hash) FROM requests").fetchall() == [(32,)]
        middle = str(rows[1][0]["id"])
        conn.execute("UPDATE requests SET hash = substr(hash, 1, 16) WHERE id = ?", (packed(middle),))
        conn.commit()
        assert "outcome fields" in (verify(whole).problem or "") and verify(whole).broken_id == middle
        conn.execute("UPDATE requests SET outcome_hash = NULL, status = NULL, resp_headers_blob = NULL, "
                     "resp_body_blob = NULL, resp_body_size = NULL, resp_body_sha256 = NULL, ended = NULL, "
                     "duration_ms = NULL, undo_class = NULL WHERE id = ?", (packed(middle),))  # its outcome gone with it
    result = verify(whole)
    assert (result.broken_id, result.problem) == (str(rows[2][0]["id"]), "its request fields do not match its hash "
                                                  "(the row was edited)")  # it signed the whole hash before it
    data, key = b"row", b"k" * 32
    assert seal_module.tag_holds(None, data, hashlib.sha256(data).hexdigest())
    assert not seal_module.tag_holds(None, data, hashlib.sha256(data).hexdigest()[:32])
    tag = seal_module.chain_tag(key, data)
    assert len(tag) == 32 and seal_module.tag_holds(key, data, tag)
    assert not any(seal_module.tag_holds(key, data, cut) for cut in (tag[:31], tag[:16], "", tag + "0", None))


def test_a_link_that_is_no_hash_is_an_edit_not_an_internal_error(tmp_path: Path) -> None:
    """A prev_hash stored as bytes of no hash's length reads back as bytes (`layout.hex_of` turns only 16 or 32 into
    hex): `edited`, which undo checks before it replays a row, said AttributeError (undo: an internal error) instead
    of naming the edit."""
    ids = RequestIds()
    rows = [(intent(ids, i), outcome(i)) for i in range(3)]
    write(tmp_path, rows)
    victim = str(rows[1][0]["id"])
    key = Seal(tmp_path).key()
    for stored in (b"\x02" * 5, b"\x02" * 33, 7):
        with sqlite3.connect(tmp_path / "a.db") as conn:
            conn.execute("UPDATE requests SET prev_hash = ? WHERE id = ?", (stored, packed(victim)))
        assert audit.edited(key, audit.get(ro(tmp_path), victim)) is not None
        assert verify(tmp_path).broken_id == victim


def test_prune_removes_the_blobs_no_kept_row_names(tmp_path: Path) -> None:
    """Pruned rows take their blobs with them, except those a kept row still names (counted down, not removed), and
    the bases of those; no blob is left that no row names (itself or through one on top of it), every count is right,
    the kept rows read back, and the chain still verifies."""
    ids = RequestIds()
    shared = b'{"ok": true, "shared": 1}'
    old = [(intent(ids, i, ts=NOW - 40 * 86400 + i), outcome(i, shared if i % 2 else None)) for i in range(6)]
    kept = [(intent(ids, 100 + i), outcome(100 + i, shared)) for i in range(2)]
    write(tmp_path, old + kept)
    seal = Seal(tmp_path)
    conn = audit.open_db(tmp_path / "a.db", seal=seal)
    done = pruning.prune(conn, seal.key(), NOW - 30 * 86400, {}, seal.anchor(), include_undoable=True)
    assert done.rows == 6
    bases = [base for (base,) in conn.execute("SELECT base FROM audit_blobs WHERE base IS NOT NULL")]
    assert bases and set(bases) <= {i for (i,) in conn.execute("SELECT id FROM audit_blobs")}
    assert dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall()) == named_counts(conn)
    assert [audit.get(conn, str(row["id"]))["req_body"] for row, _ in kept] == [row["req_body"] for row, _ in kept]
    conn.close()
    result = verify(tmp_path)
    assert (result.checked, result.broken_id, result.pruned) == (2, None, 6)


def test_a_blob_taken_by_a_prune_is_not_named_again(tmp_path: Path) -> None:
    """A writer that remembers a value it stored, after a prune (another process) removed its blob, stores it again
    instead of naming a blob that is gone."""
    ids = RequestIds()
    home = tmp_path
    writer = AuditWriter(home / "a.db", Seal(home))
    try:
        first = intent(ids, 1, ts=NOW - 40 * 86400)
        writer.record_intent(first).result(5)
        writer.record_outcome(str(first["id"]), outcome(1)).result(5)
        writer.record_intent(intent(ids, 2)).result(5)  # the newest row stays
        seal = Seal(home)
        conn = audit.open_db(home / "a.db", seal=seal)
        assert pruning.prune(conn, seal.key(), NOW - 30 * 86400, {}, seal.anchor(), include_undoable=True).rows == 1
        conn.close()
        later = intent(ids, 3)  # the same headers as the pruned row, whose blob went with it
        writer.record_intent(later).result(5)
    finally:
        writer.close()
    assert audit.get(ro(home), str(later["id"]))["req_headers"] == HEADERS
    assert verify(home).broken_id is None


def test_codec_round_trip_and_bad_input() -> None:
    for value in ("", "[]", HEADERS, b"", b"\x00\xff" * 10, bytes(range(256)) * 4, "é" * 50):
        assert blobs.decode(blobs.encode(value)) == value and type(blobs.decode(blobs.encode(value))) is type(value)
    assert blobs.encode(HEADERS)[0] == blobs.DEFLATE_V1_TEXT and len(blobs.encode(HEADERS)) < len(HEADERS) // 3
    for bad, why in ((b"", "empty"), (b"\x09abc", "unknown encoding"), (b"\x02\xff\xff\xff", "does not decompress"),
                     (b"\x01\xff", "not UTF-8")):
        with pytest.raises(AuditError, match=why):
            blobs.decode(bad)


def test_a_value_on_top_of_a_base_reads_back_only_with_that_base() -> None:
    base = b'{"ok": true, "channel": "C0BOTS", "ts": "1764000000.000001", "message": {"text": "status update"}}'
    value = base.replace(b"000001", b"000002").replace(b"status", b"weekly status")
    alone, based = blobs.encode(value), blobs.encode(value, base)
    assert based[0] == blobs.BASED_V1_BYTES and len(based) < len(alone) * 0.6
    assert blobs.decode(based, base) == value and blobs.decode(blobs.encode(HEADERS, base), base) == HEADERS
    with pytest.raises(AuditError, match="base is missing"):
        blobs.decode(based)
    with pytest.raises(AuditError):  # another base gives other bytes, or none at all
        assert blobs.decode(based, base.replace(b"C0BOTS", b"C9XXXX")) != value
        raise AuditError("read back something else")
    big = os.urandom(blobs.SMALL + 1)
    assert blobs.decode(blobs.encode(big, base)) == big  # a value past SMALL is stored alone


def test_a_value_deflated_by_a_primed_compressors_copy_is_what_a_new_compressor_makes() -> None:
    """Small values are deflated by a copy of a compressor already given its dictionary (and base): the bytes must be
    those a new compressor with that dictionary makes, value after value, past the number of primed compressors kept
    (a copy that changed its original, or a dictionary mixed up with another base's, would differ)."""
    def fresh(value: bytes, base: bytes | None) -> bytes:
        small_dictionary = (DICTIONARIES[1] + base)[-4096:] if base is not None else DICTIONARIES[1]
        packer = zlib.compressobj(blobs.LEVEL, zlib.DEFLATED, -12, 5, zlib.Z_DEFAULT_STRATEGY, small_dictionary)
        return packer.compress(value) + packer.flush()

    bases = [json.dumps({"id": n, "channel": f"C{n:05d}", "text": "status " * (n % 7)}).encode()
             for n in range(blobs.PRIMED + 5)]
    for round_ in range(2):
        for base in bases:
            value = base.replace(b'"id": ', b'"id": 9') + str(round_).encode()
            for on in (base, None):
                stored = blobs.encode(value, on)
                assert stored[1:] == fresh(value, on) or stored[0] in (blobs.RAW_BYTES, blobs.RAW_TEXT)
                assert blobs.decode(stored, on) == value
    assert len(blobs._PRIMED) <= blobs.PRIMED


def rows_alike(ids: RequestIds, n: int, **extra: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Requests to one API whose answers differ a little (a new id, a time, a word), as a real API's do."""
    out = []
    for i in range(n):
        body = json.dumps({"ok": True, "channel": "C0BOTS", "ts": f"1764000000.{i:06d}", "message": {
            "type": "message", "text": f"status update {i} " + "deploy " * (i % 3), "user": "U0BOT",
            "client_msg_id": hashlib.sha256(str(i).encode()).hexdigest()[:16]}}).encode()
        done = outcome(i, body) | {"resp_headers": json.dumps([["Content-Type", "application/json; charset=utf-8"],
                                                               ["Date", f"Fri, 04 Dec 2026 10:00:{i % 60:02d} GMT"],
                                                               ["X-Goex-Request-Id", f"r{i:012d}"]])}
        out.append((intent(ids, i, **extra), done))
    return out


def test_a_value_like_the_last_of_its_kind_is_stored_on_top_of_it(tmp_path: Path) -> None:
    """The answers of one API (host and method) are deflated on top of an earlier one: smaller than alone, and each
    reads back as written; the counts hold and the chain verifies."""
    ids = RequestIds()
    rows = rows_alike(ids, 12)
    write(tmp_path, rows)
    conn = ro(tmp_path)
    for field in ("resp_body", "resp_headers", "req_body"):
        stored = [conn.execute("SELECT data, base FROM audit_blobs WHERE id = ?",
                               (blob_of(tmp_path, str(row["id"]), field),)).fetchone() for row, _ in rows]
        assert stored[0][1] is None and all(base is not None for _, base in stored[1:]), field
        values = [audit.get(conn, str(row["id"]))[field] for row, _ in rows]
        assert values == [row.get(field) or done.get(field) for row, done in rows], field
        assert sum(len(data) for data, _ in stored[1:]) < 0.75 * sum(len(blobs.encode(v)) for v in values[1:]), field
    assert dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall()) == named_counts(conn)
    assert [r["resp_body"] for r in audit.iter_rows(conn)] == [done["resp_body"] for _, done in rows]
    assert verify(tmp_path).checked == 12


def test_an_api_whose_answers_change_gets_a_new_base(tmp_path: Path) -> None:
    """A value the last base no longer helps is stored alone, and the next of its kind goes on top of it."""
    ids = RequestIds()
    rows = rows_alike(ids, 3)
    changed = [(row, done | {"resp_body": json.dumps({"error": "ratelimited", "retry_after": 30 + i, "detail": "x" * (
        40 + i)}).encode()}) for i, (row, done) in enumerate(rows_alike(ids, 3))]
    write(tmp_path, rows + changed)
    conn = ro(tmp_path)
    bases = [conn.execute("SELECT base FROM audit_blobs WHERE id = ?", (blob_of(tmp_path, str(row["id"]),
                                                                            "resp_body"),)).fetchone()[0]
             for row, _ in rows + changed]
    first, new = blob_of(tmp_path, str(rows[0][0]["id"]), "resp_body"), blob_of(tmp_path, str(changed[0][0]["id"]),
                                                                                "resp_body")
    assert bases == [None, first, first, None, new, new]
    assert verify(tmp_path).checked == 6


def test_verify_catches_an_edited_or_removed_base(tmp_path: Path) -> None:
    """The value of a blob on top of a base depends on the base: a base rewritten breaks the rows built on it, and
    one removed makes them say in one line that they cannot be read."""
    ids = RequestIds()
    rows = rows_alike(ids, 3)
    write(tmp_path, rows)
    base = blob_of(tmp_path, str(rows[0][0]["id"]), "resp_body")
    on_top = str(rows[1][0]["id"])
    assert ro(tmp_path).execute("SELECT base FROM audit_blobs WHERE id = ?",
                                (blob_of(tmp_path, on_top, "resp_body"),)).fetchone()[0] == base
    with sqlite3.connect(tmp_path / "a.db") as conn:  # the base's row is changed back after: only the others differ
        data = conn.execute("SELECT data FROM audit_blobs WHERE id = ?", (base,)).fetchone()[0]
        conn.execute("UPDATE audit_blobs SET data = ? WHERE id = ?", (blobs.encode(b'{"ok": false}'), base))
    result = verify(tmp_path)
    assert result.broken_id == str(rows[0][0]["id"])
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE audit_blobs SET data = ?, refs = 1 WHERE id = ?", (data, base))
        conn.execute("DELETE FROM audit_blobs WHERE id = ?", (base,))
    result = verify(tmp_path)
    assert result.broken_id == str(rows[0][0]["id"]) and "outcome" in (result.problem or "")
    with pytest.raises(AuditError, match=f"resp_body of row {on_top} cannot be read.*base \\(blob {base}\\) is missing"):
        audit.get(ro(tmp_path), on_top)


def test_a_base_taken_by_a_prune_is_not_built_on(tmp_path: Path) -> None:
    """A writer that remembers a base, after a prune (another process) removed it with every row built on it,
    stores the next value of that kind alone, which then reads back and verifies."""
    ids = RequestIds()
    old = rows_alike(ids, 2, ts=NOW - 40 * 86400)
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        for row, done in old:
            writer.record_intent(row).result(5)
            writer.record_outcome(str(row["id"]), done).result(5)
        writer.record_intent(intent(ids, 50, host="api.github.com")).result(5)  # the newest row stays
        seal = Seal(tmp_path)
        conn = audit.open_db(tmp_path / "a.db", seal=seal)
        assert pruning.prune(conn, seal.key(), NOW - 30 * 86400, {}, seal.anchor(), include_undoable=True).rows == 2
        assert conn.execute("SELECT count(*) FROM audit_blobs WHERE base IS NOT NULL").fetchone()[0] == 0
        conn.close()
        later, done = rows_alike(ids, 3)[2]
        writer.record_intent(later).result(5)
        writer.record_outcome(str(later["id"]), done).result(5)
    finally:
        writer.close()
    conn = ro(tmp_path)
    assert audit.get(conn, str(later["id"]))["resp_body"] == done["resp_body"]
    assert conn.execute("SELECT base FROM audit_blobs WHERE id = ?",
                        (blob_of(tmp_path, str(later["id"]), "resp_body"),)).fetchone()[0] is None
    assert dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall()) == named_counts(conn)
    assert verify(tmp_path).broken_id is None


def test_the_dictionaries_never_change() -> None:
    """Every blob compressed with a dictionary needs that very dictionary to be read: versions are only added."""
    assert set(DICTIONARIES) == set(FROZEN) and all(fingerprint(v) == FROZEN[v] for v in DICTIONARIES)


def named_counts(conn: sqlite3.Connection) -> dict[int, int]:
    """How many row columns and blobs on top of it name each blob (what each blob's count must say)."""
    named: dict[int, int] = {}
    for found in conn.execute(f"SELECT {', '.join(layout.BLOB_COLUMNS)} FROM requests"):
        for ref in found:
            if ref is not None:
                named[ref] = named.get(ref, 0) + 1
    for (base,) in conn.execute("SELECT base FROM audit_blobs WHERE base IS NOT NULL"):
        named[base] = named.get(base, 0) + 1
    return named


def test_what_a_rolled_back_write_stored_is_never_named(tmp_path: Path) -> None:
    """Blobs stored by a write that rolled back are gone, and their ids may be given to other values: the writer
    forgets them, so a later row with the same value gets a blob that holds it."""
    ids = RequestIds()
    first, second = intent(ids, 1), intent(ids, 2)
    value_a, value_b = b'{"only": "in the rolled back write"}', b'{"what": "came next"}'
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        writer.record_intent(first).result(5)

        def fails(conn: sqlite3.Connection, w: AuditWriter) -> None:
            w.update_outcome(str(first["id"]), outcome(1, value_a))
            raise RuntimeError("this write fails after storing its blobs")

        with pytest.raises(RuntimeError):
            writer.apply(fails).result(5)
        writer.record_outcome(str(first["id"]), outcome(1, value_b)).result(5)  # may take the ids given back
        writer.record_intent(second).result(5)
        writer.record_outcome(str(second["id"]), outcome(2, value_a)).result(5)
    finally:
        writer.close()
    conn = ro(tmp_path)
    assert [audit.get(conn, str(r["id"]))["resp_body"] for r in (first, second)] == [value_b, value_a]
    assert dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall()) == named_counts(conn)
    assert verify(tmp_path).broken_id is None


def test_an_outcome_written_again_lets_go_of_the_first_ones_blobs(tmp_path: Path) -> None:
    ids = RequestIds()
    row = intent(ids, 1)
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        writer.record_intent(row).result(5)
        writer.record_outcome(str(row["id"]), outcome(1, b'{"first": 1}')).result(5)
        writer.apply(lambda conn, w: w.update_outcome(str(row["id"]), outcome(1, b'{"second": 2}'))).result(5)
    finally:
        writer.close()
    conn = ro(tmp_path)
    assert audit.get(conn, str(row["id"]))["resp_body"] == b'{"second": 2}'
    counts = dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall())
    assert {k: v for k, v in counts.items() if v > 0} == named_counts(conn) and min(counts.values()) > 0


def bomb(size: int) -> bytes:
    """A stored blob (as an attacker writes it) of a few kilobytes that inflates to `size` zero bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARIES[1])
    return bytes([blobs.DEFLATE_V1_BYTES]) + packer.compress(b"\0" * size) + packer.flush()


def test_a_small_blob_never_inflates_to_megabytes(tmp_path: Path) -> None:
    """Each blob of ten rows is replaced by 61 KB that inflate to 60 MiB: reading stops at 100 times a blob's size, so
    `verify` names the first row in a moment, and `get` says in one line what is wrong. Before, every reader held a
    chunk's blobs inflated at once: verify of these ten rows peaked at 2.1 GB, and 300 rows took 60 GB."""
    ids = RequestIds()
    rows = [intent(ids, i) for i in range(10)]
    write(tmp_path, [(row, outcome(i)) for i, row in enumerate(rows)])
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE audit_blobs SET data = ?", (bomb(60 << 20),))
    tracemalloc.start()
    try:
        result = verify(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.broken_id == rows[0]["id"] and peak < 32 << 20, peak
    with pytest.raises(AuditError, match="decompresses past its bound"):
        audit.get(ro(tmp_path), str(rows[0]["id"]))


def test_a_blob_cut_short_or_with_bytes_added_is_refused() -> None:
    """A compressed blob cut short read as the first part of its value (a different value, silently); one with bytes
    after its end read as the value. Neither is what the writer stored."""
    stored = blobs.encode(HEADERS)
    with pytest.raises(AuditError, match="ends early"):
        blobs.decode(stored[:-3])
    with pytest.raises(AuditError, match="bytes follow"):
        blobs.decode(stored + b"\x00")


def test_a_value_deflate_shrinks_past_the_bound_is_stored_raw_and_reads_back(tmp_path: Path) -> None:
    """What the writer stores always reads back: 1 MiB of zeros deflates 1000 to 1, past what a reader inflates, so it
    is kept raw."""
    ids = RequestIds()
    row, body = intent(ids, 1), b"\0" * (1 << 20)
    write(tmp_path, [(row, outcome(1, body))])
    assert blobs.encode(body)[0] == blobs.RAW_BYTES
    assert audit.get(ro(tmp_path), str(row["id"]))["resp_body"] == body and verify(tmp_path).broken_id is None


def test_a_read_holds_one_rows_large_values_at_a_time(tmp_path: Path) -> None:
    """Twenty rows, each with two different 8 MB bodies that deflate 37 to 1 (within the bound): `verify` and a prune
    hold one row's bodies at a time, not the 320 MB of a chunk's (a prune kept every row it examined whole)."""
    ids = RequestIds()

    def big() -> bytes:
        value = bytearray(os.urandom(20000) * 420)
        value[::300] = os.urandom(len(value[::300]))
        return bytes(value)

    write(tmp_path, [(intent(ids, i, ts=NOW - 40 * 86400 + i, req_body=big(), req_body_sha256=None),
                      outcome(i, big())) for i in range(20)] + [(intent(ids, 100), outcome(100))])
    assert os.path.getsize(tmp_path / "a.db") < 10 << 20  # stored deflated: the bound allows them
    seal = Seal(tmp_path)
    conn = audit.open_db(tmp_path / "a.db", seal=seal)
    tracemalloc.start()
    try:
        result = verify(tmp_path)
        verify_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        done = pruning.prune(conn, seal.key(), NOW - 30 * 86400, {}, seal.anchor(), include_undoable=True)
        prune_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        conn.close()
    assert result.broken_id is None and result.checked == 21 and verify_peak < 64 << 20, verify_peak
    assert done.rows == 20 and prune_peak < 64 << 20, prune_peak


def test_a_blob_count_set_low_is_caught_before_a_prune_removes_what_rows_name(tmp_path: Path) -> None:
    """An old row and a kept one name one response body; its count is set to 1 in the database. `log verify` must say
    so, and a prune must refuse (it would count the old row off and remove the blob the kept row names). Before,
    verify said the log was intact, and the prune removed the blob: only then did verify find the kept row broken."""
    ids = RequestIds()
    shared = b'{"ok": true, "shared": 1}'
    old, kept = intent(ids, 1, ts=NOW - 40 * 86400), intent(ids, 2)
    write(tmp_path, [(old, outcome(1, shared)), (kept, outcome(2, shared)), (intent(ids, 3), outcome(3))])
    ref = blob_of(tmp_path, str(kept["id"]), "resp_body")
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE audit_blobs SET refs = 1 WHERE id = ?", (ref,))
    result = verify(tmp_path)
    assert result.broken_id == old["id"] and f"blob {ref}" in str(result.problem), result
    seal = Seal(tmp_path)
    conn = audit.open_db(tmp_path / "a.db", seal=seal)
    with pytest.raises(AuditError, match="nothing was pruned"):
        pruning.prune(conn, seal.key(), NOW - 30 * 86400, {}, seal.anchor(), include_undoable=True)
    conn.close()
    assert audit.get(ro(tmp_path), str(kept["id"]))["resp_body"] == shared


def test_the_decision_and_undo_class_indexes_hold_only_rows_a_filter_needs_them_for(tmp_path: Path) -> None:
    """Allowed rows and reads (no undo class) are left out of those indexes; every filter still finds exactly its
    rows, in the console and in `log`, and a filter on a rarer decision or on an undo class is read from its index."""
    ids = RequestIds()
    rows = []
    for i in range(30):
        decision = "deny" if i % 10 == 3 else "report" if i == 7 else "allow"
        done = outcome(i) | ({"undo_class": None} if i % 3 else {}) | ({"status": 403} if decision == "deny" else {})
        rows.append((intent(ids, i, decision=decision), done))
    write(tmp_path, rows)
    conn = ro(tmp_path)
    index = {name: sql for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")}
    assert "WHERE decision != 'allow'" in index["idx_requests_decision"]
    assert "WHERE undo_class IS NOT NULL" in index["idx_requests_undo_class"]
    for name in [n for n in index if n.startswith("idx_requests_")]:  # the start is in none (migration 25: `times`)
        assert "ts" not in [c for _, _, c in conn.execute(f"PRAGMA index_info({name})")], name
    entries = dict(conn.execute("SELECT name, sum(ncell) FROM dbstat WHERE name LIKE 'idx_requests_%' AND pagetype "
                                "= 'leaf' GROUP BY name").fetchall())
    assert (entries["idx_requests_decision"], entries["idx_requests_undo_class"], entries["idx_requests_id"]) \
        == (4, 10, 30)  # 3 denied and 1 reported; every third has a class
    for decision in ("allow", "deny", "report", "hold"):
        wanted = [str(row["id"]) for row, _ in reversed(rows) if row["decision"] == decision]
        assert [r["id"] for r in console_data.page(conn, console_data.Filters(decision=decision), limit=100)] == wanted
        assert [r["id"] for r in audit.query(conn, decision=decision, limit=None)] == wanted
    for undo_class in ("exact", "no rule"):
        wanted = [str(row["id"]) for row, done in reversed(rows) if done.get("undo_class") == undo_class]
        assert [r["id"] for r in console_data.page(conn, console_data.Filters(undo_class=undo_class))] == wanted
    clauses, params = console_data.Filters(decision="deny").where(conn)
    plan = str(conn.execute("EXPLAIN QUERY PLAN SELECT seq FROM requests WHERE " + " AND ".join(clauses) +
                            " ORDER BY ts DESC", params).fetchall())
    assert "idx_requests_decision" in plan, plan
    assert conn.execute("SELECT count(*) FROM requests WHERE typeof(undo_class) = 'blob'").fetchone()[0] == 10
    clauses, params = console_data.Filters(undo_class="exact").where(conn)  # the name, or its id (migration 25)
    assert any(isinstance(p, bytes) for p in params) or "X'" in clauses[0], clauses
    plan = str(conn.execute("EXPLAIN QUERY PLAN SELECT seq FROM requests WHERE " + " AND ".join(clauses) +
                            " ORDER BY ts DESC", params).fetchall())
    assert "idx_requests_undo_class" in plan, plan


def test_a_row_keeps_room_for_its_outcome_until_it_comes(tmp_path: Path) -> None:
    """A row written before its outcome holds zero bytes in its room column, about what the outcome adds, so that it
    does not grow (and split its page) when the outcome comes; the outcome frees it. No reader ever sees the room."""
    ids = RequestIds()
    waiting, done_at_once = intent(ids, 1), intent(ids, 2, decision="deny") | outcome(2) | {"status": 403}
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        writer.record_intent(waiting).result(5)
        writer.record_intent(done_at_once).result(5)
        conn = ro(tmp_path)
        room = {layout.id_read(i): r for i, r in conn.execute("SELECT id, room FROM requests")}
        assert room == {waiting["id"]: layout.OUTCOME_ROOM, done_at_once["id"]: None}
        assert len(layout.OUTCOME_ROOM) >= 32 and not any(layout.OUTCOME_ROOM)
        before = conn.execute("SELECT sum(payload) FROM dbstat WHERE name = 'requests'").fetchone()[0]
        writer.record_outcome(str(waiting["id"]), outcome(1)).result(5)
        after = conn.execute("SELECT sum(payload) FROM dbstat WHERE name = 'requests'").fetchone()[0]
    finally:
        writer.close()
    assert {layout.id_read(i): r for i, r in conn.execute("SELECT id, room FROM requests")} == {waiting["id"]: None,
                                                                             done_at_once["id"]: None}
    assert after - before <= len(layout.OUTCOME_ROOM) // 8  # the outcome took the room's place (this one is a byte
    # more than the room: the room is what most outcomes take, `audit_size_bench.grown` measures which)
    assert all("room" not in row for row in audit.iter_rows(conn))
    assert "room" not in audit.get(conn, str(waiting["id"])) and verify(tmp_path).checked == 2


def test_an_outcome_larger_than_its_room_reads_back_whole(tmp_path: Path) -> None:
    """The room (`layout.OUTCOME_ROOM`) is what most outcomes take, not a bound: one far larger (a long error text, a
    long undo class, an approval), written after rows that filled the page around its own, grows its row past the
    room and past the page, and every row, those beside it too, reads back exactly as written and verifies."""
    ids = RequestIds()
    rows = [intent(ids, i) for i in range(24)]
    room = len(layout.OUTCOME_ROOM)
    sizes = [room - 1, room, room + 1, 4 * room, 5000, 70_000]
    outcomes = {}
    for i, row in enumerate(rows):
        size = sizes[i % len(sizes)]
        error = ("upstream said \u00e9 " * (size // 16 + 1))[:size] if i % 2 else None
        outcomes[row["id"]] = {**outcome(i), **({"status": None, "resp_headers": None, "resp_body": None,
                                                  "resp_body_size": None, "resp_body_sha256": None, "error": error}
                                                 if error else {}),
                               "undo_class": "needs-preimage" + "/x" * (size // 2) if i % 3 == 0 else "exact"}
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        for row in rows:  # every row first, each with its room: the pages fill around them
            writer.record_intent(row).result(5)
        for row in rows[1::2] + rows[-2::-2]:  # the outcomes out of order, in separate transactions
            writer.record_outcome(str(row["id"]), outcomes[row["id"]]).result(5)
    finally:
        writer.close()
    conn = ro(tmp_path)
    for row in rows:
        got = audit.get(conn, str(row["id"]))
        assert {k: got[k] for k in (*row, *outcomes[row["id"]])} == {**row, **outcomes[row["id"]]}, row["id"]
    assert conn.execute("SELECT count(*) FROM requests WHERE room IS NOT NULL").fetchone() == (0,)
    assert verify(tmp_path).checked == len(rows) and verify(tmp_path).broken_id is None


def test_upgrading_a_long_log_says_so_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A migration may build an index over every row, holding the proxy meanwhile: a long log is told about first;
    a new log or one already upgraded is not."""
    ids = RequestIds()
    with monkeypatch.context() as old_version:
        old_version.setattr(audit, "MIGRATIONS", audit.MIGRATIONS[:11])
        old_version.setattr(layout, "stored", lambda fields, put, kind=(), **_: dict(fields))
        old_version.setattr(layout, "OUTCOME_ROOM", b"")
        write(tmp_path, [(intent(ids, i), outcome(i)) for i in range(3)])
    monkeypatch.setattr(audit, "LARGE_LOG_ROWS", 3)
    with caplog.at_level("WARNING", logger="goex_proxy.audit.store"):
        audit.open_db(tmp_path / "a.db", seal=Seal(tmp_path)).close()
        audit.open_db(tmp_path / "a.db", seal=Seal(tmp_path)).close()
        (tmp_path / "fresh").mkdir()
        audit.open_db(tmp_path / "fresh" / "a.db", seal=Seal(tmp_path / "fresh")).close()
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"upgrading the audit log (3 rows) from schema 11 to {len(audit.MIGRATIONS)}; this is done once "
                    "and may take about a minute for every ten million rows"]
    assert verify(tmp_path).checked == 3


def test_a_base_takes_at_most_base_uses_values_then_the_next_is_the_base(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A steady API's values go on a base a bounded number of times, so that a prune that removes the base's row
    stores again at most that many kept values, not everything built on it since the API's first answer."""
    monkeypatch.setattr(blobs, "BASE_USES", 3)
    ids = RequestIds()
    rows = rows_alike(ids, 9)
    write(tmp_path, rows)
    conn = ro(tmp_path)
    named = [blob_of(tmp_path, str(row["id"]), "resp_body") for row, _ in rows]
    bases = [conn.execute("SELECT base FROM audit_blobs WHERE id = ?", (i,)).fetchone()[0] for i in named]
    assert bases == [None, named[0], named[0], named[0], None, named[4], named[4], named[4], None]
    assert [audit.get(conn, str(row["id"]))["resp_body"] for row, _ in rows] == [d["resp_body"] for _, d in rows]
    assert verify(tmp_path).checked == 9


def test_an_outcome_written_again_with_fewer_fields_leaves_none_of_the_first(tmp_path: Path) -> None:
    """An outcome written a second time (a waited request ended by the gate after its answer came, an interrupted row
    ended again) with fewer fields than the first: the first's status, headers, body and undo class stayed in the row
    while the new outcome hash covered the second's alone, so `log verify` called a row nobody edited broken. Now the
    row holds the second outcome only, verifies, and the first's blobs are let go."""
    ids = RequestIds()
    row = intent(ids, 1)
    write(tmp_path, [(row, outcome(1, b'{"ok": true, "only": "first"}'))])
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        writer.record_outcome(str(row["id"]), {"error": "ended again", "ended": NOW}).result(5)
    finally:
        writer.close()
    got = audit.get(ro(tmp_path), str(row["id"]))
    assert (got["error"], got["status"], got["resp_body"], got["resp_headers"], got["undo_class"]) == \
        ("ended again", None, None, None, None)
    result = verify(tmp_path)
    assert (result.checked, result.broken_id) == (1, None), result
    with sqlite3.connect(tmp_path / "a.db") as conn:
        found = blobs.fetch(conn, {i for (i,) in conn.execute("SELECT id FROM audit_blobs")})
    kept = [blobs.value_of(found, i, {}) for i in found]
    assert kept and not any("first" in (v.decode() if isinstance(v, bytes) else str(v)) for v in kept)
