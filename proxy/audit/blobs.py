"""Headers and bodies kept apart from their rows: compressed (raw deflate with a fixed preset dictionary), stored once
while they repeat, counted by the rows that name them (so that pruning removes those no row names)."""

from __future__ import annotations

import hashlib
import sqlite3
import zlib
from collections import OrderedDict

from ..errors import AuditError
from .dictionary import DICTIONARIES

TABLE = "audit_blobs"
#: The first byte of a stored blob: how the rest is encoded. Never renumbered (old blobs keep their codes).
RAW_BYTES, RAW_TEXT, DEFLATE_V1_BYTES, DEFLATE_V1_TEXT = 0, 1, 2, 3
_DEFLATED = {DEFLATE_V1_BYTES: (1, bytes), DEFLATE_V1_TEXT: (1, str)}
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


def encode(value: str | bytes) -> bytes:
    """A value as stored: its code byte, then the value deflated with the dictionary (or as is, if not smaller)."""
    text = isinstance(value, str)
    raw = value.encode() if isinstance(value, str) else value
    window, memory = (_SMALL_WINDOW, _SMALL_MEMORY) if len(raw) <= SMALL else (-15, 8)
    packer = zlib.compressobj(LEVEL, zlib.DEFLATED, window, memory, zlib.Z_DEFAULT_STRATEGY, DICTIONARIES[1])
    packed = packer.compress(raw) + packer.flush()
    if len(packed) < len(raw) and len(raw) <= _bound(1 + len(packed)):
        return bytes([DEFLATE_V1_TEXT if text else DEFLATE_V1_BYTES]) + packed
    return bytes([RAW_TEXT if text else RAW_BYTES]) + raw


def decode(data: bytes) -> str | bytes:
    """The value a stored blob holds; AuditError if it cannot be read."""
    if not data:
        raise AuditError("a stored blob is empty")
    code, rest = data[0], data[1:]
    if code in (RAW_BYTES, RAW_TEXT):
        raw = rest
    elif code in _DEFLATED:
        unpacker = zlib.decompressobj(-15, DICTIONARIES[_DEFLATED[code][0]])
        try:
            raw = unpacker.decompress(rest, _bound(len(data)))
        except zlib.error as exc:
            raise AuditError(f"a stored blob does not decompress ({exc})") from None
        if unpacker.unconsumed_tail or (not unpacker.eof and unpacker.decompress(b"", 1)):
            raise AuditError(f"a stored blob decompresses past its bound ({_bound(len(data)):,} bytes)")
        if not unpacker.eof or unpacker.unused_data:  # never as written: it was cut, or bytes were added
            raise AuditError("a stored blob's compressed data ends early" if not unpacker.eof else
                             "bytes follow a stored blob's compressed data")
    else:
        raise AuditError(f"a stored blob has an unknown encoding {code}")
    if code in (RAW_TEXT, DEFLATE_V1_TEXT):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise AuditError("a stored text blob is not UTF-8") from None
    return bytes(raw)


def _digest(value: str | bytes) -> bytes:
    return hashlib.sha256((b"t" + value.encode()) if isinstance(value, str) else (b"b" + value)).digest()


class BlobStore:
    """The writer's side: `put` a value (in the writer's transaction) and get the id a row names it by."""

    def __init__(self, recent: int = RECENT) -> None:
        self._recent: OrderedDict[bytes, int] = OrderedDict()  # digest -> blob id, newest last
        self._size = recent

    def put(self, conn: sqlite3.Connection, value: str | bytes) -> int:
        """The id of a blob holding `value`: one recently stored, if it is still there (a prune may have taken it),
        with one more row counted; else a new one. Ids are never reused once committed (AUTOINCREMENT), and the
        writer `forget`s whenever a transaction or savepoint rolls back (what it stored there is gone, and its ids
        may be given again), so a remembered id that is still there holds this value."""
        digest = _digest(value)
        known = self._recent.get(digest)
        if known is not None:
            if conn.execute(f"UPDATE {TABLE} SET refs = refs + 1 WHERE id = ?", (known,)).rowcount == 1:
                self._recent.move_to_end(digest)
                return known
            del self._recent[digest]
        blob_id = int(conn.execute(f"INSERT INTO {TABLE} (data, refs) VALUES (?, 1)", (encode(value),)).lastrowid or 0)
        self._recent[digest] = blob_id
        if len(self._recent) > self._size:
            self._recent.popitem(last=False)
        return blob_id

    def forget(self) -> None:
        """Drop what is remembered (after a failed transaction, whose blobs are gone)."""
        self._recent.clear()


def fetch(conn: sqlite3.Connection, ids: set[int]) -> dict[int, bytes]:
    """The stored form of these blobs, by id (those missing are left out)."""
    found: dict[int, bytes] = {}
    wanted = sorted(ids)
    for start in range(0, len(wanted), 500):
        part = wanted[start:start + 500]
        found.update(conn.execute(f"SELECT id, data FROM {TABLE} WHERE id IN ({', '.join('?' * len(part))})", part))
    return found


def release(conn: sqlite3.Connection, ids: list[int]) -> int:
    """Count one row less for each id (an id once per row that named it); delete the blobs no row names any more.
    How many were deleted."""
    counts: dict[int, int] = {}
    for blob_id in ids:
        counts[blob_id] = counts.get(blob_id, 0) + 1
    conn.executemany(f"UPDATE {TABLE} SET refs = refs - ? WHERE id = ?", [(n, i) for i, n in counts.items()])
    gone = 0
    wanted = sorted(counts)
    for start in range(0, len(wanted), 500):
        part = wanted[start:start + 500]
        gone += conn.execute(f"DELETE FROM {TABLE} WHERE refs <= 0 AND id IN ({', '.join('?' * len(part))})",
                             part).rowcount
    return gone
