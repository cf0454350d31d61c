"""Short ids that sort by time, for audit rows and file runs, unique across the processes sharing one audit log:
9 base-32 characters of milliseconds, then 4 of this process's tag and a count within the millisecond (Crockford's
alphabet)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: The 20 bits after the milliseconds: a process tag in the high 10, a count within the millisecond in the low 10.
TAGS = 1024
PER_MS = 1024

log = logging.getLogger(__name__)


class _Clock:
    """The process's one source of ids: every RequestIds shares it, so that two of them never give one id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_ms = 0
        self.n = 0
        self.tag = secrets.randbelow(TAGS)  # until `claim` holds one no other process has
        self.claimed: dict[Path, list[int]] = {}  # lock directory -> [the open, locked tag file, claims on it]

    def new(self, now: float | None) -> str:
        with self.lock:
            ms = max(int((now or time.time()) * 1000), self.last_ms)
            if ms == self.last_ms:
                self.n += 1
                if self.n >= PER_MS:
                    ms, self.n = ms + 1, 0
            else:
                self.n = 0
            self.last_ms = ms
            return _b32(ms, 9) + _b32(self.tag * PER_MS + self.n, 4)


_CLOCK = _Clock()


class RequestIds:
    """Short ids that sort by time (within a millisecond, by process and then by order)."""

    def new(self, now: float | None = None) -> str:
        return _CLOCK.new(now)


def tags_folder(audit_db: Path) -> Path:
    """Where the processes writing this audit database hold their tags (hidden from agents like the database)."""
    return audit_db.parent / f".{audit_db.name}.ids"


def claim(audit_db: Path) -> None:
    """Hold, until the last `release` of this log (its writers closed) or the process ends, a tag that no other live
    process holds for this audit database: the first free one of TAGS lock files beside it, each held with flock (the
    kernel lets go when a process ends, however it ends). Two proxies on one log (`run` and an `exec --jail` without
    it, or several workers) then never make the same id. A process keeps the tag it claimed first; past TAGS
    processes at once, a random tag (and a warning)."""
    folder = tags_folder(audit_db)
    with _CLOCK.lock:
        if folder in _CLOCK.claimed:
            _CLOCK.claimed[folder][1] += 1
            return
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("request ids: cannot create %s (%s); ids may repeat across processes", folder, exc)
            return
        for offset in range(TAGS):
            tag = (_CLOCK.tag + offset) % TAGS
            try:
                fd = os.open(folder / f"{tag:04d}", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                log.warning("request ids: cannot open a tag file in %s (%s); ids may repeat across processes", folder,
                            exc)
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                if _CLOCK.claimed:
                    break  # this process's tag is another's here: keep it (ids of the first log stay unique)
                continue
            _CLOCK.claimed[folder] = [fd, 1]
            _CLOCK.tag, _CLOCK.n = tag, PER_MS  # a new tag starts its count in the next millisecond
            return
        log.warning("request ids: no free tag in %s; ids may repeat across processes", folder)


@contextlib.contextmanager
def unheld(audit_db: Path, tag: int) -> Iterator[bool]:
    """Whether no live process holds `tag` for this audit database (whoever made ids with it has ended, however it
    ended), holding the tag meanwhile so that no process starting now takes it. This process's own tag is held."""
    try:
        fd = os.open(tags_folder(audit_db) / f"{tag:04d}", os.O_RDWR)
    except OSError:
        yield False  # no such file: no process ever held it (or the folder is not ours to read)
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def tag_of(request_id: str) -> int:
    """The tag of the process that made an id."""
    return _number(request_id[9:].upper()) // PER_MS


def release(audit_db: Path) -> None:
    """One `claim` of this log ends (its writer closed); the last lets go of the tag file."""
    folder = tags_folder(audit_db)
    with _CLOCK.lock:
        held = _CLOCK.claimed.get(folder)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            os.close(held[0])
            del _CLOCK.claimed[folder]


def is_request_id(text: str) -> bool:
    """True for a string shaped like the ids `RequestIds` makes."""
    return len(text) == 13 and all(c in _CROCKFORD for c in text)


#: The bytes of an id packed (`packed`): the 65 bits its 13 characters could hold fit in 64 until the year 2527.
PACKED_BYTES = 8


def packed(request_id: str) -> bytes | None:
    """The number an id spells, in PACKED_BYTES big-endian bytes (how the audit log keeps it: 8 bytes where the
    text takes 13); None for a text that is no id, or spells a number past them."""
    if not is_request_id(request_id):
        return None
    n = _number(request_id)
    return n.to_bytes(PACKED_BYTES, "big") if n < 1 << (8 * PACKED_BYTES) else None


def unpacked(value: bytes) -> str | None:
    """The id `packed` gave these bytes for (None: not PACKED_BYTES long)."""
    return _b32(int.from_bytes(value, "big"), 13) if len(value) == PACKED_BYTES else None


def _number(text: str) -> int:
    """The number these characters of Crockford's alphabet spell (`_b32` the other way)."""
    n = 0
    for c in text:
        n = n * 32 + _CROCKFORD.index(c)
    return n


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 32)
        out.append(_CROCKFORD[r])
    return "".join(reversed(out))
