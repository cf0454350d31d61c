"""How a row is stored and read back: the same fields and values as written, in less room. Headers, bodies, rule and
reason go to blobs (the row names them), hashes are kept as bytes instead of hex characters, the agent and host as
the id of their name (`names`, since migration 20), the request id as the 8 bytes of the number it spells
(migration 23), a loopback client as its port, the end as ticks after the start, and a value the row's other
fields give (its URL from scheme, host, port and path; a body's sha256 when the body is
stored whole; a port that is its scheme's own; a duration that is its end less its start) or most rows have (the
scheme https, HTTP/1.1, the decision allow, since migration 23) is left out.
The writer leaves out each row's prev_hash (always the hash of the row before it when written); a prune writes it
into the row after the rows it removes. Rows written before (schema 11 and older) hold every value as is; both read
back the same."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections import ChainMap
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

from .. import ids
from ..errors import AuditError
from . import blobs, names

#: Fields kept in blobs; a row names each by id in the column of the same name with `_blob` after it. The rule and
#: reason too: the same few sentences over and over (a reason per rule), each then kept once.
BLOB_FIELDS = ("req_headers", "req_body", "resp_headers", "resp_body", "pre_headers", "pre_body", "rule", "reason")
BLOB_COLUMNS = tuple(f"{f}_blob" for f in BLOB_FIELDS)
_PAIRS = tuple(zip(BLOB_FIELDS, BLOB_COLUMNS, strict=True))
#: Fields that hold a SHA-256 or HMAC-SHA256 in lower-case hex: stored as its 32 bytes.
HEX_FIELDS = ("prev_hash", "hash", "outcome_hash", "req_body_sha256", "resp_body_sha256")
#: A body's digest, left out when it is the digest of the body as stored.
DIGEST_OF = {"req_body_sha256": "req_body", "resp_body_sha256": "resp_body"}
#: Stored in place of a value that the row's other fields give (a zero-length blob: never a value of these fields).
DERIVED = b""
_HEX = re.compile(r"[0-9a-f]{64}|[0-9a-f]{32}")  # a SHA-256 or an HMAC, whole or cut (`seal.TAG_HEX`)
#: The column that keeps room for a row's outcome until it comes, never a field of the row. An outcome adds its hash
#: (16 bytes), its end (3), status, sizes and blob ids a few each, its undo class's id, more with an error; of rooms
#: of 24 to 44 bytes, 32 left the fewest pages split or emptied in a log the writer grows once undo classes were kept
#: by id (40 before; bench/README.md).
ROOM = "room"
OUTCOME_ROOM = bytes(32)
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: The value most rows have in these fields, left out where a row has it (DERIVED in its place).
COMMON = {"scheme": "https", "http_version": "HTTP/1.1", "decision": "allow"}
#: Where most clients connect from (agents on this machine, the jail's bridge): such a client is kept as its port, in
#: two bytes (a blob: never a client's text, which always holds this host's address too).
LOOPBACK = "127.0.0.1:"


_SURROGATE = re.compile("[\ud800-\udfff]")


def stored_text(value: str) -> str:
    """A text as the log keeps it (SQLite takes only UTF-8): each lone surrogate, which is how a byte that was not
    UTF-8 reads in a path, query, header value or agent name (surrogateescape), written as its JSON escape
    (`\\udcff`), so that a JSON text (headers) reads back as it was and `show` writes it `\\xff`. A filter on an
    agent or host looks for its name in this form too."""
    if value.isascii() or not _SURROGATE.search(value):
        return value
    return _SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", value)


def _loopback_port(client: Any) -> bytes | None:
    """A loopback client's port as stored (None: not one, or not in the form the proxy writes)."""
    if not isinstance(client, str) or not client.startswith(LOOPBACK):
        return None
    port = client[len(LOOPBACK):]
    if not (port.isascii() and port.isdigit() and str(int(port)) == port and 0 < int(port) < 65536):
        return None
    return int(port).to_bytes(2, "big")


def url_of(scheme: Any, host: Any, port: Any, path: Any) -> str | None:
    """The URL these parts make when the port is the scheme's own or given (None: not parts of a URL)."""
    if not all(isinstance(v, str) for v in (scheme, host, path)) or not isinstance(port, int):
        return None
    netloc = f"[{host}]" if ":" in host else host
    if _DEFAULT_PORTS.get(scheme) != port:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{path}"


#: A row's end is kept as its distance from its start in ticks of 2**-22 s: every time from 2004 to 2038 is a whole
#: number of them as a float (the spacing of floats between 2**30 and 2**31), so the difference of two is exact and
#: adds back to the end exactly. Kept so only where it does, in the fewest bytes (a blob: a REAL column gives an
#: integer back as a float), up to four (eight minutes).
_TICK = 2.0 ** -22
_MOST_TICK_BYTES = 4


def _ended_ticks(started: Any, ended: Any) -> bytes | None:
    """An end as stored after its start (None: kept as it is)."""
    if type(started) is not float or type(ended) is not float or not ended >= started:
        return None
    ticks = (ended - started) / _TICK
    if not ticks.is_integer() or ticks >= 1 << (8 * _MOST_TICK_BYTES):
        return None
    count = int(ticks)
    if started + count * _TICK != ended:
        return None
    return count.to_bytes(max(1, (count.bit_length() + 7) // 8), "big")


def duration_of(started: Any, ended: Any) -> float | None:
    """A request's duration in ms as the proxy records it, from its start (the row's ts) and end (None: not times)."""
    if type(started) is not float or type(ended) is not float:
        return None
    return round((ended - started) * 1000, 3)


def stored(fields: dict[str, Any], put: Callable[[str | bytes, Hashable], int], kind: tuple[Any, ...] = (), *,
           started: float | None = None, name: Callable[[str], int] | None = None) -> dict[str, Any]:
    """The columns to write for these fields of a row (all of them, or an outcome's, whose row began at `started`);
    `put` stores a blob of a value and its family: the field and `kind` (the row's host and method, whose answers
    are alike); `name` gives the id of an agent or host name (`names.Names.id_of`), kept in its place."""
    out = dict(fields)
    if isinstance(request_id := fields.get("id"), str) and (packed := ids.packed(request_id)) is not None:
        out["id"] = packed
    if name is not None:
        for field in names.FIELDS:
            if isinstance(value := fields.get(field), str):
                out[field] = names.ref_of(name(value))
    for field, column in _PAIRS:  # never in a column of their own (a new log has none: migration 21)
        if isinstance(value := fields.get(field), (str, bytes)):
            out[column] = put(value, (field, *kind))
            del out[field]
        elif value is None:
            out.pop(field, None)
    for field, body in DIGEST_OF.items():
        value, content = fields.get(field), fields.get(body)
        if isinstance(value, str) and isinstance(content, bytes) and hashlib.sha256(content).hexdigest() == value:
            out[field] = DERIVED
    for field in HEX_FIELDS:
        value = out.get(field)
        if isinstance(value, str) and _HEX.fullmatch(value):
            out[field] = bytes.fromhex(value)
    if isinstance(fields.get("url"), str) and url_of(*(fields.get(k) for k in ("scheme", "host", "port", "path"))) \
            == fields["url"]:
        out["url"] = DERIVED
    for field, common in COMMON.items():
        if fields.get(field) == common:
            out[field] = DERIVED
    if (client := _loopback_port(fields.get("client"))) is not None:
        out["client"] = client
    port = fields.get("port")
    if type(port) is int and _DEFAULT_PORTS.get(fields.get("scheme")) == port:  # type: ignore[arg-type]
        out["port"] = DERIVED
    began = fields.get("ts", started)
    duration = fields.get("duration_ms")
    if type(duration) is float and repr(duration) == repr(duration_of(began, fields.get("ended"))):
        out["duration_ms"] = DERIVED  # as the hash has it: 0.0 == -0.0, but the one would read back as the other
    if (ticks := _ended_ticks(began, fields.get("ended"))) is not None:
        out["ended"] = ticks
    return out


def id_forms(request_id: str) -> list[str | bytes]:
    """The values a row's id column may hold for this id: the id as written before ids were packed (and an id that
    does not pack), and packed (`ids.packed`)."""
    packed = ids.packed(request_id)
    return [request_id] if packed is None else [request_id, packed]


def id_term(request_id: str, column: str = "id") -> tuple[str, list[str | bytes]]:
    """An SQL term true of the row with this id, however it holds it, and its parameters (through the id's index)."""
    forms = id_forms(request_id)
    return f"{column} IN ({', '.join('?' * len(forms))})", forms


def id_read(value: Any) -> Any:
    """A row's id column, read outside `read`, as the id it holds (what is not a packed id, as it is)."""
    return (ids.unpacked(value) or value) if isinstance(value, bytes) else value


def hex_of(value: Any) -> Any:
    """A stored hash as the hex the chain works with (rows written before hold it as hex already)."""
    return value.hex() if isinstance(value, bytes) and len(value) in (16, 32) else value


def _left_out(row: dict[str, Any], field: str) -> bool:
    """Whether a stored row holds DERIVED in this field: its value is for the other fields to give."""
    value = row.get(field)
    return isinstance(value, bytes) and value == DERIVED


def unreadable(field: str, why: str) -> str:
    """What a lenient read gives for a value that cannot be read: never what was hashed, so the row fails `verify`."""
    return f"<unreadable {field}: {why}>"


def decoded(found: dict[Any, tuple[Any, Any]], ref: Any, bases: dict[Any, bytes | AuditError]
            ) -> str | bytes | AuditError | None:
    """A fetched blob's value, or why it cannot be read (None: it is missing)."""
    try:
        return blobs.value_of(found, ref, bases)
    except AuditError as exc:
        return exc.with_traceback(None)  # kept: not with the frame that holds what it inflated


#: A decoded value up to this size is kept while a chunk of rows is read (the rule, reason and headers many rows
#: name are decoded once); a larger one is held only while its row is.
SHARED = 4096


def logical(row: dict[str, Any], values: Mapping[int, str | bytes | AuditError | None], *, lenient: bool = False,
            named: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The row as it was written, from its stored columns, its blobs' `values` (by id, as `decoded` gives them) and
    the `named` agents and hosts (by id, as `names.fetch` gives them). A value that cannot be read raises AuditError,
    or, `lenient`, reads as something that fails the chain check."""
    out = dict(row)
    out.pop(ROOM, None)
    if isinstance(packed := out.get("id"), bytes):
        out["id"] = ids.unpacked(packed)
        if out["id"] is None:
            if not lenient:
                raise AuditError(f"the audit log is damaged: the id of the row at seq {row.get('seq')} is "
                                 f"{len(packed)} bytes; `goex-proxy log verify` checks the log")
            out["id"] = unreadable("id", f"{len(packed)} bytes")
    for field in names.FIELDS:
        if isinstance(ref := out.get(field), bytes):
            found = (named or {}).get(names.id_of_ref(ref))
            if found is None:
                if not lenient:
                    raise AuditError(f"the audit log is damaged: the {field} of row {out.get('id')} cannot be read "
                                     f"({names.unnamed(ref)}); `goex-proxy log verify` checks the log") from None
                found = unreadable(field, names.unnamed(ref))
            out[field] = found
    for field, column in _PAIRS:
        if column not in out:  # not read
            continue
        ref = out.pop(column)
        out.setdefault(field, None)  # a new log has no column of its own for it
        if ref is None:
            continue
        value = values.get(ref, None)
        if isinstance(value, (str, bytes)):
            out[field] = value
        else:
            exc = value or AuditError(f"blob {ref} is missing")
            if not lenient:
                raise AuditError(f"the audit log is damaged: the {field} of row {out.get('id')} cannot be read "
                                 f"({exc}); `goex-proxy log verify` checks the log") from None
            out[field] = unreadable(field, str(exc))
    for field in HEX_FIELDS:
        if field in out:
            out[field] = hex_of(out[field])
    for field, body in DIGEST_OF.items():
        if _left_out(out, field):
            content = out.get(body)
            out[field] = hashlib.sha256(content).hexdigest() if isinstance(content, bytes) else \
                unreadable(field, "its body is not stored")
    for field, common in COMMON.items():
        if _left_out(out, field):
            out[field] = common
    if isinstance(out.get("client"), bytes):
        client = out["client"]
        out["client"] = f"{LOOPBACK}{int.from_bytes(client, 'big')}" if len(client) == 2 else \
            unreadable("client", f"{len(client)} bytes")
    if _left_out(out, "port"):
        port = _DEFAULT_PORTS.get(out.get("scheme"))  # type: ignore[arg-type]
        out["port"] = unreadable("port", "no scheme of its own") if port is None else port
    if isinstance(ticks := out.get("ended"), bytes):
        out["ended"] = out["ts"] + int.from_bytes(ticks, "big") * _TICK if type(out.get("ts")) is float and \
            0 < len(ticks) <= _MOST_TICK_BYTES else unreadable("ended", "no start, or not ticks")
    if _left_out(out, "duration_ms"):
        duration = duration_of(out.get("ts"), out.get("ended"))
        out["duration_ms"] = unreadable("duration_ms", "no start and end") if duration is None else duration
    if _left_out(out, "url"):
        out["url"] = url_of(*(out.get(k) for k in ("scheme", "host", "port", "path"))) or unreadable("url", "no parts")
    return out


def refs(row: dict[str, Any]) -> list[Any]:
    """The blob ids a stored row names (one per column that names one), as stored: one that is not an integer (never
    as written) names no blob, and reads as missing."""
    return [row[c] for c in BLOB_COLUMNS if row.get(c) is not None]


def miscounted(conn: sqlite3.Connection) -> tuple[Any, Any, int, str, int] | None:
    """The first blob some row names whose count is not the number of rows that name it: (its id, its count, the rows
    naming it, the id and seq of the first), or None when every count holds. Counts are outside the chain: one set
    too low would have a prune remove a blob that kept rows still name. One pass over the rows, counted on disk."""
    based = blobs.has_bases(conn)
    naming = [f"SELECT {c} AS ref FROM requests WHERE {c} IS NOT NULL" for c in BLOB_COLUMNS]
    if based:  # a blob stored on top of a base counts as one more naming it
        naming.append(f"SELECT base AS ref FROM {blobs.TABLE} WHERE base IS NOT NULL")
    found = conn.execute(f"SELECT n.ref, coalesce(b.refs, 0), n.named FROM (SELECT ref, count(*) AS named FROM "
                         f"({' UNION ALL '.join(naming)}) GROUP BY ref) n LEFT JOIN {blobs.TABLE} b ON b.id = n.ref "
                         "WHERE coalesce(b.refs, 0) != n.named LIMIT 1").fetchone()
    if found is None:
        return None
    ids = [found[0]]
    if based:
        ids += [i for (i,) in conn.execute(f"SELECT id FROM {blobs.TABLE} WHERE base = ? LIMIT 100", (found[0],))]
    holes = ", ".join("?" * len(ids))
    first = conn.execute(f"SELECT id, seq FROM requests WHERE {' OR '.join(f'{c} IN ({holes})' for c in BLOB_COLUMNS)} "
                         "ORDER BY seq LIMIT 1", ids * len(BLOB_COLUMNS)).fetchone() or ("", 0)
    return found[0], found[1], int(found[2]), str(id_read(first[0])), int(first[1])  # id and count as stored (edited: any type)


def hash_before(conn: sqlite3.Connection, seq: int) -> str:
    """The hash of the row before seq `seq` ("" for the first): what a row that leaves out its prev_hash links to."""
    found = conn.execute("SELECT hash FROM requests WHERE seq < ? ORDER BY seq DESC LIMIT 1", (seq,)).fetchone()
    return str(hex_of(found[0])) if found else ""


def expand(conn: sqlite3.Connection, rows: list[dict[str, Any]], *, lenient: bool = False,
           before: tuple[int, str] | None = None) -> Iterator[dict[str, Any]]:
    """Stored rows as written, one at a time, their blobs read in one query and each decoded as its row is made (so
    that a read holds one row's headers and bodies, not a chunk's). A prev_hash left out (the hash of the row before,
    as the writer stores it) is read from that row; `before`: the rows are every row from the one after seq
    `before[0]`, in seq order, and before[1] is that row's hash."""
    wanted = {ref for r in rows for ref in refs(r)}
    found = blobs.fetch(conn, wanted) if wanted else {}
    named = names.fetch(conn, names.refs(rows))
    shared: dict[int, str | bytes | AuditError | None] = {}
    bases: dict[int, bytes | AuditError] = {}
    for stored in rows:
        large: dict[int, str | bytes | AuditError | None] = {}
        for ref in refs(stored):
            if ref not in shared:
                value = decoded(found, ref, bases)
                if isinstance(value, (str, bytes)) and len(value) > SHARED:
                    large[ref] = value
                else:
                    shared[ref] = value
        row = logical(stored, ChainMap(large, shared) if large else shared, lenient=lenient, named=named)
        if _left_out(row, "prev_hash"):
            row["prev_hash"] = before[1] if before is not None else hash_before(conn, int(row["seq"]))
        if before is not None:
            before = (int(row["seq"]), str(row["hash"]))
        yield row


#: Rows read (and their blobs fetched) per step of a long read.
CHUNK = 500


def read(conn: sqlite3.Connection, sql: str, params: Iterable[Any] = (), *, lenient: bool = False,
         consecutive: bool = False) -> Iterator[dict[str, Any]]:
    """The rows a SELECT on `requests` gives, as written (the one way rows are read whole). `consecutive`: the SELECT
    gives (`*`, in seq order) every row from its first on, so each row's predecessor is the row read before it."""
    cursor = conn.execute(sql, tuple(params))
    names = [d[0] for d in cursor.description]
    before: tuple[int, str] | None = None
    while chunk := cursor.fetchmany(CHUNK):
        stored = [dict(zip(names, r, strict=True)) for r in chunk]
        if consecutive and before is None:
            before = (int(stored[0]["seq"]) - 1, hash_before(conn, int(stored[0]["seq"])))
        for row in expand(conn, stored, lenient=lenient, before=before):
            if consecutive:
                before = (int(row["seq"]), str(row["hash"]))
            yield row
