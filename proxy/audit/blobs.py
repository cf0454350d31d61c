"""Headers and bodies kept apart from their rows: compressed (raw deflate with a fixed preset dictionary, and a small
value with the last one of its kind too), stored once while they repeat, counted by the rows that name them (so that
pruning removes those no row names)."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import zlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from ..errors import AuditError
from .dictionary import DICTIONARIES

TABLE = "audit_blobs"
#: The first byte of a stored blob: how the rest is encoded. Never renumbered (old blobs keep their codes).
RAW_BYTES, RAW_TEXT, DEFLATE_V1_BYTES, DEFLATE_V1_TEXT = 0, 1, 2, 3
#: Deflated with dictionary 1 followed by the value of another blob, its base (named in the `base` column and counted
#: in the base's refs): a row's answer from an API is much like the last one that API gave.
BASED_V1_BYTES, BASED_V1_TEXT = 4, 5
_DEFLATED = {DEFLATE_V1_BYTES: (1, bytes), DEFLATE_V1_TEXT: (1, str), BASED_V1_BYTES: (1, bytes),
             BASED_V1_TEXT: (1, str)}
_BASED = (BASED_V1_BYTES, BASED_V1_TEXT)
#: Values stored in a process's recent memory, to be named again instead of stored again.
RECENT = 4096
#: zlib's level: 6 compresses these small values as well as 9 does, and a 64 KiB body in half the time.
LEVEL = 6
#: A value up to this size is deflated with a 4 KiB window (it holds the dictionary) and little memory: zlib's full
#: 32 KiB window costs about 85 us to set up, ten times the rest of the work on a header list; the output is the
#: same for values this small. Larger ones get the full window. Inflating takes either.
SMALL = 4096
_SMALL_WINDOW, _SMALL_MEMORY = -12, 5
#: A decompressed blob larger than this is refused (stored values are cut at `audit.max_body_bytes`, far below).
MAX_VALUE_BYTES = 64 * 1024 * 1024
#: Past RATIO_FLOOR bytes, a blob decompresses to at most MAX_RATIO times its stored size: whoever can write the
#: database must not make a few kilobytes that every reader inflates to 64 MiB. `encode` stores a value raw where
#: deflate would pass that ratio, so that every blob it writes reads back.
RATIO_FLOOR, MAX_RATIO = 64 * 1024, 100


def _bound(stored: int) -> int:
    """The most bytes a blob of `stored` bytes may decompress to."""
    return min(MAX_VALUE_BYTES, max(RATIO_FLOOR, MAX_RATIO * stored))


def _based_dictionary(base: bytes) -> bytes:
    """What a value is deflated with on top of its base: the base last (deflate finds later bytes at shorter
    distances), cut to the small window, the most a based value's deflate looks back."""
    return (DICTIONARIES[1] + base)[-(1 << -_SMALL_WINDOW):]


def raw_of(value: str | bytes) -> bytes:
    """A value's bytes, as deflated (text as UTF-8)."""
    return value.encode() if isinstance(value, str) else value


#: Compressors of small values, each already given its dictionary (the fixed one, or one on top of a base's bytes),
#: the most recently used last: a value is deflated by a copy of one. Setting up a compressor and its dictionary cost
#: as much as deflating a small value; a family's values are deflated on the same base up to BASE_USES times.
_PRIMED: OrderedDict[bytes | None, Any] = OrderedDict()
_PRIMED_LOCK = threading.Lock()  # writers in several threads of one process (the thread writer, a test's two)
#: How many primed compressors are kept (each about 40 KiB: a 4 KiB window and its hash tables).
PRIMED = 64


def _primed(base: bytes | None) -> Any:
    """A compressor of a small value deflated with the dictionary and `base` (None: the dictionary alone), to copy."""
    with _PRIMED_LOCK:
        packer = _PRIMED.get(base)
        if packer is not None:
            _PRIMED.move_to_end(base)
            return packer
        dictionary = _based_dictionary(base) if base is not None else DICTIONARIES[1]
        packer = _PRIMED[base] = zlib.compressobj(LEVEL, zlib.DEFLATED, _SMALL_WINDOW, _SMALL_MEMORY,
                                                  zlib.Z_DEFAULT_STRATEGY, dictionary)
        if len(_PRIMED) > PRIMED:
            _PRIMED.popitem(last=False)
        return packer


def encode(value: str | bytes, base: bytes | None = None) -> bytes:
    """A value as stored: its code byte, then the value deflated with the dictionary (and `base`, the bytes of another
    blob's value, for a value up to SMALL), or as is, if not smaller."""
    text = isinstance(value, str)
    raw = raw_of(value)
    small = len(raw) <= SMALL
    based = base is not None and small
    if small:
        packer = _primed(base if based else None).copy()  # as a new compressor given the same dictionary deflates
    else:
        packer = zlib.compressobj(LEVEL, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARIES[1])
    packed: bytes = packer.compress(raw) + packer.flush()
    if based:
        return bytes([BASED_V1_TEXT if text else BASED_V1_BYTES]) + packed
    if len(packed) < len(raw) and len(raw) <= _bound(1 + len(packed)):
        return bytes([DEFLATE_V1_TEXT if text else DEFLATE_V1_BYTES]) + packed
    return bytes([RAW_TEXT if text else RAW_BYTES]) + raw


def decode(data: bytes, base: bytes | None = None, most: int = MAX_VALUE_BYTES) -> str | bytes:
    """The value a stored blob holds (`base`: the bytes of its base's value, for a blob that has one; `most`: the
    most bytes it may hold); AuditError if it cannot be read."""
    if not isinstance(data, bytes):  # never as written: the database was edited
        raise AuditError(f"a stored blob is not bytes but {type(data).__name__}")
    if not data:
        raise AuditError("a stored blob is empty")
    code, rest = data[0], data[1:]
    bound = min(_bound(len(data)), most)
    if code in (RAW_BYTES, RAW_TEXT):
        raw = rest
        if len(raw) > most:
            raise AuditError(f"a stored blob holds more than {most:,} bytes")
    elif code in _DEFLATED:
        if code in _BASED and base is None:
            raise AuditError("a stored blob's base is missing")
        dictionary = _based_dictionary(base) if code in _BASED and base is not None else DICTIONARIES[_DEFLATED[code][0]]
        unpacker = zlib.decompressobj(-15, dictionary)
        try:
            raw = unpacker.decompress(rest, bound)
        except zlib.error as exc:
            raise AuditError(f"a stored blob does not decompress ({exc})") from None
        if unpacker.unconsumed_tail or (not unpacker.eof and unpacker.decompress(b"", 1)):
            raise AuditError(f"a stored blob decompresses past its bound ({bound:,} bytes)")
        if not unpacker.eof or unpacker.unused_data:  # never as written: it was cut, or bytes were added
            raise AuditError("a stored blob's compressed data ends early" if not unpacker.eof else
                             "bytes follow a stored blob's compressed data")
    else:
        raise AuditError(f"a stored blob has an unknown encoding {code}")
    if code in (RAW_TEXT, DEFLATE_V1_TEXT, BASED_V1_TEXT):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise AuditError("a stored text blob is not UTF-8") from None
    return bytes(raw)


def _digest(value: str | bytes) -> bytes:
    return hashlib.sha256((b"t" + value.encode()) if isinstance(value, str) else (b"b" + value)).digest()


#: Families (a field of one host's one method, as the writer names them) whose last base is remembered.
FAMILIES = 1024
#: A based blob is stored when at most this part of the value's size deflated alone (it costs a read of its base);
#: else the value is stored alone and becomes its family's base.
BASED_AT_MOST = 0.9


#: The most values deflated on top of one base; the next is stored alone and becomes its family's base. A prune that
#: removes a base's row stores again the values on it that it keeps (`replace_unnamed_bases`): at most this many, the
#: values written right after it, and not every value of a steady API since its first answer.
BASE_USES = 1000


@dataclass(slots=True)
class _Base:
    """A blob a family's next values are deflated on top of: its id, its value's bytes, how much of them it stored
    (deflated alone), and how many values were deflated on top of it."""

    id: int
    value: bytes
    ratio: float
    uses: int = 0


class BlobStore:
    """The writer's side: `put` a value (in the writer's transaction) and get the id a row names it by."""

    def __init__(self, recent: int = RECENT) -> None:
        self._recent: OrderedDict[tuple[Hashable, bytes], int] = OrderedDict()  # (owner, digest) -> blob id, newest last
        self._size = recent
        self._bases: OrderedDict[Hashable, _Base] = OrderedDict()  # family -> its last base
        #: Blobs found there in this transaction, and the rows more that name them, not written yet (`write_counts`)
        self._counts: dict[int, int] = {}

    def put(self, conn: sqlite3.Connection, value: str | bytes, family: Hashable | None = None,
            owner: Hashable = None) -> int:
        """The id of a blob holding `value`: one recently stored for the same `owner`, if it is still there (a prune
        may have taken it), with one more row counted; else a new one, deflated on top of the last base of its `family` where that makes
        it smaller enough. Ids are never reused once committed (AUTOINCREMENT), and the writer `forget`s whenever a
        transaction or savepoint rolls back (what it stored there is gone, and its ids may be given again), so a
        remembered id that is still there holds this value."""
        digest = (owner, _digest(value))
        known = self._recent.get(digest)
        if known is not None:
            if self._counted(conn, known):
                self._recent.move_to_end(digest)
                return known
            del self._recent[digest]
        raw = raw_of(value)
        kept = self._bases.get(family) if family is not None and len(raw) <= SMALL else None
        data = self._on_base(conn, value, raw, kept) if kept is not None else None
        base = kept.id if data is not None and kept is not None else None
        if data is None:  # alone: then its family's next base
            data = encode(value)
        blob_id = int(conn.execute(f"INSERT INTO {TABLE} (data, refs, base) VALUES (?, 1, ?)",
                                   (data, base)).lastrowid or 0)
        self._counts[blob_id] = 0  # there in this transaction: a row more that names it is counted in memory
        if base is None and family is not None and len(raw) <= SMALL:
            self._bases[family] = _Base(blob_id, raw, len(data) / max(1, len(raw)))  # the next of its family goes on it
            self._bases.move_to_end(family)
            if len(self._bases) > FAMILIES:
                self._bases.popitem(last=False)
        self._recent[digest] = blob_id
        if len(self._recent) > self._size:
            self._recent.popitem(last=False)
        return blob_id

    def _on_base(self, conn: sqlite3.Connection, value: str | bytes, raw: bytes, kept: _Base) -> bytes | None:
        """`value` deflated on top of its family's base, that base counted once more; None where it is to be stored
        alone (the base took its BASE_USES values, helps too little, or was pruned since)."""
        if kept.uses >= BASE_USES:
            return None
        data = encode(value, kept.value)
        # Judged by the base's own ratio first, so that a value is deflated alone only when the base does not beat
        # that ratio (one deflate a value, mostly).
        if len(data) > BASED_AT_MOST * kept.ratio * len(raw) and len(data) > BASED_AT_MOST * len(encode(value)):
            return None
        if not self._counted(conn, kept.id):
            return None  # pruned since: the value stored alone takes its place
        kept.uses += 1
        return data

    def _counted(self, conn: sqlite3.Connection, blob_id: int) -> bool:
        """Count one row more for a blob this writer stored; False if it is gone (a prune took it). The first time in
        a transaction by an UPDATE, which finds whether it is there; after that in memory (`write_counts`), as nothing
        else removes a blob within the transaction, which holds the write lock."""
        if blob_id in self._counts:
            self._counts[blob_id] += 1
            return True
        if conn.execute(f"UPDATE {TABLE} SET refs = refs + 1 WHERE id = ?", (blob_id,)).rowcount != 1:
            return False
        self._counts[blob_id] = 0
        return True

    def write_counts(self, conn: sqlite3.Connection) -> None:
        """Write the rows counted in memory, and trust nothing found there any more: called before the transaction
        commits, and before and after anything else in it reads or changes counts or removes blobs (a prune, a
        release)."""
        counted = [(n, blob_id) for blob_id, n in self._counts.items() if n]
        self._counts.clear()
        if counted:
            conn.executemany(f"UPDATE {TABLE} SET refs = refs + ? WHERE id = ?", counted)

    def forget(self) -> None:
        """Drop what is remembered (after a failed transaction, whose blobs are gone), counts not yet written too."""
        self._recent.clear()
        self._bases.clear()
        self._counts.clear()


def fetch(conn: sqlite3.Connection, ids: set[Any]) -> dict[Any, tuple[Any, Any]]:
    """The stored form of these blobs and of their bases, by id: the data and the base's id (those missing are left
    out, and so is an id that is not an integer: never as written). A base's own base is never fetched: `value_of`
    refuses a base that has one, and a chain of them would cost a query a link."""
    found = _select(conn, ids)
    found.update(_select(conn, {base for _, base in found.values() if base is not None} - found.keys()))
    return found


def _select(conn: sqlite3.Connection, ids: set[Any]) -> dict[Any, tuple[Any, Any]]:
    """The data and base of the blobs of these ids, those that are integers."""
    found: dict[Any, tuple[Any, Any]] = {}
    wanted = sorted(i for i in ids if isinstance(i, int))
    # A log the last release wrote, read before a writer migrated it (read-only commands do not), has no bases.
    base = "base" if wanted and has_bases(conn) else "NULL"
    for start in range(0, len(wanted), 500):
        part = wanted[start:start + 500]
        found.update((i, (data, under)) for i, data, under in conn.execute(
            f"SELECT id, data, {base} FROM {TABLE} WHERE id IN ({', '.join('?' * len(part))})", part))
    return found


def has_bases(conn: sqlite3.Connection) -> bool:
    """Whether the log's blobs may name bases (schema 17 on)."""
    return "base" in {r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})")}


def value_of(found: dict[Any, tuple[Any, Any]], blob_id: Any, bases: dict[Any, bytes | AuditError]
             ) -> str | bytes | None:
    """The value of a blob `fetch` gave (None: it is missing); AuditError if it cannot be read. `bases` keeps the
    bytes of each base read, for the next blob on top of it."""
    entry = found.get(blob_id)
    if entry is None:
        return None
    data, base = entry
    if base is None:
        return decode(data)
    if base not in bases:
        bases[base] = _base_bytes(found, base)
    under = bases[base]
    if isinstance(under, AuditError):
        raise under
    return decode(data, under)


def _base_bytes(found: dict[Any, tuple[Any, Any]], base: Any) -> bytes | AuditError:
    """The bytes of a base's value, or why they cannot be read."""
    entry = found.get(base)
    if entry is None:
        return AuditError(f"its base (blob {base}) is missing")
    if entry[1] is not None:  # never as written: a base is a blob stored alone
        return AuditError(f"its base (blob {base}) has a base of its own")
    try:  # a base is a value stored alone, up to SMALL: a larger one is never inflated, nor kept for the next row
        return raw_of(decode(entry[0], most=SMALL))
    except AuditError as exc:
        return AuditError(f"its base (blob {base}) cannot be read ({exc})")


def release(conn: sqlite3.Connection, ids: list[Any]) -> int:
    """Count one row less for each id (an id once per row that named it); delete the blobs no row names any more, and
    count each one's base one less (a loop, not a recursion: a hand-edited chain of bases is as long as it likes).
    How many were deleted."""
    gone = 0
    while ids:
        counts: dict[Any, int] = {}
        for blob_id in ids:
            counts[blob_id] = counts.get(blob_id, 0) + 1
        conn.executemany(f"UPDATE {TABLE} SET refs = refs - ? WHERE id = ?", [(n, i) for i, n in counts.items()])
        ids = []
        wanted = list(counts)
        for start in range(0, len(wanted), 500):
            part = wanted[start:start + 500]
            unnamed = f"refs <= 0 AND id IN ({', '.join('?' * len(part))})"
            ids += [b for (b,) in conn.execute(f"SELECT base FROM {TABLE} WHERE base IS NOT NULL AND {unnamed}", part)]
            gone += conn.execute(f"DELETE FROM {TABLE} WHERE {unnamed}", part).rowcount
    return gone


#: Blobs `replace_unnamed_bases` stores again in one call (one write transaction the proxy's writer waits for).
REWRITES = 2000


def replace_unnamed_bases(conn: sqlite3.Connection, most: int = REWRITES) -> int:
    """Let go of each base no row names any more (its rows pruned, or an outcome written again), which the blobs on
    top of it kept whole: what the removed rows held must go with them. The newest blob on it is stored alone and
    becomes the base of the others, each stored again on top of it (the same values: the chain holds); the newest,
    so that the next prunes, which take the older rows first, leave it in place. Call in a write transaction; one
    pass over the blobs, and at most `most` blobs stored again: how many were (call again while that is `most`). A
    base with a blob on top of it that cannot be read is left as it is (`log verify` names that blob's row)."""
    unnamed = [base for (base,) in conn.execute(
        f"SELECT d.base FROM (SELECT base, count(*) AS n FROM {TABLE} WHERE base IS NOT NULL GROUP BY base) d "
        f"JOIN {TABLE} b ON b.id = d.base WHERE b.refs = d.n ORDER BY d.base")]
    moved = 0
    for start in range(0, len(unnamed), 500):
        part = unnamed[start:start + 500]
        holes = ", ".join("?" * len(part))
        stored = dict(conn.execute(f"SELECT id, data FROM {TABLE} WHERE id IN ({holes})", part).fetchall())
        above: dict[int, list[tuple[int, bytes]]] = {}
        for blob_id, data, base in conn.execute(f"SELECT id, data, base FROM {TABLE} WHERE base IN ({holes}) "
                                                "ORDER BY id DESC", part):
            above.setdefault(base, []).append((blob_id, data))
        for base, on_top in above.items():
            if moved >= most:
                return moved
            moved += _replace(conn, base, stored.get(base), on_top[:most - moved])
    return moved


def _replace(conn: sqlite3.Connection, base: int, data: bytes | None, on_top: list[tuple[int, bytes]]) -> int:
    """Move these blobs on top of `base` onto the first of them (stored alone), then delete `base` if nothing names
    it any more. How many were moved."""
    under = _base_bytes({base: (data, None)} if data is not None else {}, base)
    try:
        if isinstance(under, AuditError):
            raise under
        values = [(blob_id, decode(blob, under)) for blob_id, blob in on_top]
    except AuditError:
        return 0
    new_base: tuple[int, bytes] | None = None
    for blob_id, value in values:
        raw = raw_of(value)
        if new_base is None or len(raw) > SMALL:  # alone: the first, and one no base may be built on (never written)
            conn.execute(f"UPDATE {TABLE} SET data = ?, base = NULL WHERE id = ?", (encode(value), blob_id))
            if new_base is None and len(raw) <= SMALL:
                new_base = (blob_id, raw)
        else:
            conn.execute(f"UPDATE {TABLE} SET data = ?, base = ? WHERE id = ?",
                         (encode(value, new_base[1]), new_base[0], blob_id))
            conn.execute(f"UPDATE {TABLE} SET refs = refs + 1 WHERE id = ?", (new_base[0],))
    conn.execute(f"UPDATE {TABLE} SET refs = refs - ? WHERE id = ?", (len(on_top), base))
    conn.execute(f"DELETE FROM {TABLE} WHERE id = ? AND refs <= 0", (base,))
    return len(on_top)
