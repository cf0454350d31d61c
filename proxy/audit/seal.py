"""The audit chain's seal: its HMAC key and the anchor of its newest row, kept in the state directory, never in the log."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AuditError

KEY_FILE = "audit.key"
ANCHOR_FILE = "audit.anchor"


@dataclass(frozen=True)
class Anchor:
    """The newest row of the chain as last written: whoever rewrites the log cannot rewrite this copy."""

    seq: int
    id: str
    hash: str

    def dumps(self) -> str:
        return json.dumps({"seq": self.seq, "id": self.id, "hash": self.hash}, separators=(",", ":")) + "\n"

    @classmethod
    def loads(cls, text: str, where: str) -> Anchor:
        """An anchor from its JSON text; AuditError naming `where` when it is not one."""
        try:
            raw = json.loads(text)
            anchor = cls(int(raw["seq"]), str(raw["id"]), str(raw["hash"]))
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError):  # 1e400 as seq; [[[... too deep
            raise AuditError(f"{where} is not an audit anchor (JSON with seq, id and hash, as `goex-proxy log anchor` "
                             "prints)") from None
        if anchor.seq < 1 or len(anchor.hash) not in (TAG_HEX, 64):
            raise AuditError(f"{where} is not an audit anchor (seq {anchor.seq}, hash {anchor.hash[:70]!r})")
        return anchor


#: The anchor file holds two slots of SLOT bytes, each a line: an anchor's JSON, a space, the first CHECK_HEX digits of
#: its SHA-256, spaces up to the newline. A writer overwrites in place the slot that does not hold the newer anchor:
#: a file made and renamed over the last for every batch of rows cost the audit writer about 100 us of a batch, and
#: freeing the last one as much again. A slot torn (a power loss amid its write, or read while it is written) fails
#: its check, and the other slot, the anchor before, is read: the anchor read may lag the log, never lead it. A file of
#: one JSON line (written before) is read as that anchor and replaced by a file of slots at the next write.
SLOT = 256
CHECK_HEX = 16
#: How often a read that found no whole slot is tried again (two writes in a row, each tearing one slot as it is read).
_READS = 3
#: The most bytes of an anchor file read: a file of slots, or a JSON line written before, is far smaller.
_MOST_READ = 64 * 1024


def _slot_of(anchor: Anchor) -> bytes:
    """An anchor's slot as written."""
    text = anchor.dumps().rstrip("\n")
    line = f"{text} {hashlib.sha256(text.encode()).hexdigest()[:CHECK_HEX]}".encode()
    if len(line) > SLOT - 1:
        raise AuditError(f"an audit anchor of {len(line)} bytes does not fit its slot of {SLOT} (an id of "
                         f"{len(anchor.id)} characters)")
    return line.ljust(SLOT - 1) + b"\n"


def _in_slot(data: bytes) -> Anchor | None:
    """The anchor a slot holds whole (None: blank, torn or not a slot)."""
    text, _, check = data.rstrip(b" \n").rpartition(b" ")
    if len(check) != CHECK_HEX or hashlib.sha256(text).hexdigest()[:CHECK_HEX].encode() != check:
        return None
    try:
        return Anchor.loads(text.decode(), "a slot")
    except (AuditError, UnicodeDecodeError):
        return None


def _slotted(data: bytes) -> bool:
    """Whether a file's bytes are two slots (else a JSON line written before, or not an anchor)."""
    return len(data) == 2 * SLOT and data[SLOT - 1] == data[-1] == ord("\n")


def _newest(data: bytes) -> tuple[Anchor | None, int]:
    """The newer of the anchors two slots hold whole, and the index of the slot to write next (the other one)."""
    held = [_in_slot(data[:SLOT]), _in_slot(data[SLOT:])]
    first, second = held
    if first is None and second is None:
        return None, 0
    newer = 0 if second is None or first is not None and first.seq >= second.seq else 1
    return held[newer], 1 - newer


def anchor_in(data: bytes, where: str) -> Anchor:
    """The anchor a file's bytes hold: the newer of the whole ones in two slots (the state directory's, or a copy of
    it), or one JSON line (`log anchor`'s, or a version before's); AuditError naming `where` when they hold none."""
    if _slotted(data):
        found, _ = _newest(data)
        if found is None:
            raise AuditError(f"{where} is not an audit anchor (neither of its two slots holds one whole)")
        return found
    if _slot_like(data):  # a file of slots cut or extended: not to be "mended" with the newest row's anchor
        raise AuditError(f"{where} is not an audit anchor: it looks like a file of two slots, but holds {len(data)} "
                         f"bytes where one holds {2 * SLOT}; put back a copy you kept (`log verify --anchor` checks "
                         "one), not the newest row's, which would hide rows cut from the end")
    try:
        return Anchor.loads(data.decode(), where)
    except UnicodeDecodeError:  # not text: no anchor, said as any other malformed one is
        raise AuditError(f"{where} is not an audit anchor (its bytes are not UTF-8)") from None


def _slot_like(data: bytes) -> bool:
    """Whether a file's bytes that are not two slots hold a line of one (an anchor's JSON and its check)."""
    return any(_in_slot(line) is not None for line in data.split(b"\n"))


#: How long a writer waits for the anchor's lock, which another holds for a read and a write of one slot (a sync, at
#: a state directory's first anchor), before its batch fails (its requests refused).
LOCK_WAIT_S = 10.0


def flock_within(fd: int, seconds: float) -> bool:
    """Take the exclusive lock on `fd`, asked again after pauses that grow from 50 µs to 1 ms (a lock held for a
    fraction of a millisecond is had soon after; a wait in the kernel would have no bound); False if not had within
    `seconds` (its holder stopped with Ctrl-Z or SIGSTOP, say)."""
    deadline, pause = time.monotonic() + seconds, 0.00005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.001)


class Seal:
    """Signs the chain with a key from the state directory and keeps its newest head there too."""

    def __init__(self, state_dir: Path) -> None:
        self.key_path = state_dir / KEY_FILE
        self.anchor_path = state_dir / ANCHOR_FILE
        self._key: bytes | None = None
        #: The anchor file, held open to be read (pread; every audit write checks the anchor), and its identity
        #: (device, inode): while the file under the name is this one, it is read through this descriptor; held, its
        #: inode number cannot go to another file.
        self._reading: tuple[int, tuple[int, int]] | None = None
        #: The same, open to write its slots in place (a writer's), once a file of slots is under the name.
        self._writing: tuple[int, tuple[int, int]] | None = None
        self._holding = threading.Lock()
        #: The bytes last read or written of a file of slots, the newest anchor they hold and the slot to write next
        #: (parsed again only when the bytes read differ: a writer reads the file twice a batch, and finds what it wrote).
        self._last: tuple[bytes, Anchor, int] | None = None
        #: Whether the temporary anchors a writer killed midway left behind were removed (once, under the lock).
        self._swept = False

    def key(self, *, create: bool = False) -> bytes | None:
        """The chain key (32 bytes), made on first use when `create`; None when there is none yet."""
        if self._key is None:
            try:
                self._key = bytes.fromhex(self.key_path.read_text(encoding="ascii").strip())
            except FileNotFoundError:
                if not create:
                    return None
                self._key = self._new_key()
            except (OSError, ValueError) as exc:
                raise AuditError(f"cannot read the audit chain key {self.key_path}: {exc}") from None
            if len(self._key) != 32:
                raise AuditError(f"the audit chain key {self.key_path} is not 32 bytes in hex")
        return self._key

    def _new_key(self) -> bytes:
        key = secrets.token_bytes(32)
        try:
            self.key_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return bytes.fromhex(self.key_path.read_text(encoding="ascii").strip())
        except OSError as exc:
            raise AuditError(f"cannot create the audit chain key {self.key_path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key.hex() + "\n")
            out.flush()
            os.fsync(out.fileno())
        return key

    def anchor(self) -> Anchor | None:
        """The newest anchor the file holds whole (None: there is none); AuditError when the file is not an anchor."""
        data = b""
        for _ in range(_READS):
            read = self._read()
            if read is None:
                return None
            data = read
            if not _slotted(data):
                break
            found, _ = self._parsed(data)
            if found is not None:
                return found
        return anchor_in(data, str(self.anchor_path))  # a JSON line, or two slots neither of which is whole

    def _parsed(self, data: bytes) -> tuple[Anchor | None, int]:
        """`_newest` of a file of slots' bytes, kept for the next read of the same bytes."""
        last = self._last  # one read of it: another thread may replace it meanwhile
        if last is not None and last[0] == data:
            return last[1], last[2]
        found, index = _newest(data)
        if found is not None:
            self._last = (data, found, index)
        return found, index

    def _read(self) -> bytes | None:
        """The anchor file's bytes (None: there is none), through the descriptor held on it while it is the file
        under the name."""
        try:
            st = os.stat(self.anchor_path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditError(f"cannot read the audit anchor {self.anchor_path}: {exc.strerror or exc}") from None
        with self._holding:
            if self._reading is None or self._reading[1] != (st.st_dev, st.st_ino):
                fd = self._open(os.O_RDONLY)
                if fd is None:
                    return None
                self._hold("_reading", fd)
            assert self._reading is not None
            try:
                return os.pread(self._reading[0], _MOST_READ, 0)
            except OSError as exc:
                raise AuditError(f"cannot read the audit anchor {self.anchor_path}: {exc.strerror or exc}") from None

    def _open(self, flags: int) -> int | None:
        """The anchor file opened with `flags` (None: there is none), never a FIFO (one put there would wait for a
        writer), a directory or a device."""
        try:
            fd = os.open(self.anchor_path, flags | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditError(f"cannot read the audit anchor {self.anchor_path}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise AuditError(f"the audit anchor {self.anchor_path} is not a regular file (a directory, a FIFO or a "
                             "device was put in its place); move it aside")
        return fd

    def _hold(self, which: str, fd: int | None) -> None:
        """Hold `fd` as the reading or the writing descriptor (None: none), closing the one held before."""
        before: tuple[int, tuple[int, int]] | None = getattr(self, which)
        if fd is None:
            setattr(self, which, None)
        else:
            st = os.fstat(fd)
            setattr(self, which, (fd, (st.st_dev, st.st_ino)))
        if before is not None:
            with contextlib.suppress(OSError):
                os.close(before[0])

    def __del__(self) -> None:
        for held in (getattr(self, "_reading", None), getattr(self, "_writing", None)):  # None: __init__ stopped early
            if held is not None:
                with contextlib.suppress(OSError):
                    os.close(held[0])

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the anchor's lock (between writers of one state directory, in any process); AuditError when another
        process has held it for LOCK_WAIT_S (a writer stopped with SIGSTOP while it held it: waited for without a
        bound, every other writer of the log, and every request waiting on one, stalled for as long)."""
        lock = self.anchor_path.with_name(f".{ANCHOR_FILE}.lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open the audit anchor's lock {lock}: {exc.strerror or exc}") from None
        try:
            if not flock_within(fd, LOCK_WAIT_S):
                raise AuditError(f"another process has held the audit anchor's lock {lock} for over {LOCK_WAIT_S:g} s "
                                 "(a goex-proxy process stopped with Ctrl-Z or SIGSTOP?)")
            if not self._swept:  # nobody is between making a temporary anchor and removing it while the lock is held
                for left in self.anchor_path.parent.glob(f".{ANCHOR_FILE}.*.tmp"):
                    with contextlib.suppress(OSError):  # a directory someone put there stays (it is no anchor)
                        left.unlink()
                self._swept = True
            yield
        finally:
            os.close(fd)

    def set_anchor(self, anchor: Anchor | None, before_new: Callable[[], None] | None = None) -> None:
        """Keep `anchor` as the newest (None: remove the file); call under `locked()`. Written in place into the slot
        not holding the newer anchor, or, where the file under the name is no file of slots (none yet, or one written
        before), as a new file renamed over it, after `before_new` (which puts what it anchors on disk: a new file is
        synced, and must not outlast a power loss the rows it names do not)."""
        if anchor is None:
            with contextlib.suppress(FileNotFoundError):
                self.anchor_path.unlink()
            return
        slot = _slot_of(anchor)
        with self._holding:
            fd = self._slots()
            if fd is None:
                self._hold("_writing", None)
                if before_new is not None:
                    before_new()
                self._replace(slot)
                return
            data = os.pread(fd, 2 * SLOT, 0)
            other, index = self._parsed(data)
            if os.pwrite(fd, slot, index * SLOT) != SLOT:
                raise OSError(f"the audit anchor {self.anchor_path} took only part of its slot")
            if _slotted(data) and (other is None or anchor.seq > other.seq):  # what the next read finds, unless
                written = data[:index * SLOT] + slot + data[(index + 1) * SLOT:]  # another writer writes first
                self._last = (written, anchor, 1 - index)

    def _slots(self) -> int | None:
        """A descriptor open to write the file of slots under the anchor's name (None: that file is not one)."""
        try:
            st = os.lstat(self.anchor_path)
        except FileNotFoundError:
            return None
        if not _own(st):
            return None
        if self._writing is not None and self._writing[1] == (st.st_dev, st.st_ino):
            return self._writing[0]
        if st.st_size != 2 * SLOT:
            return None
        try:
            fd = self._open(os.O_RDWR | os.O_NOFOLLOW)  # never written through a link put in its place
        except AuditError:
            return None  # replaced by a file of slots: whatever took its place meanwhile is renamed over
        if fd is None:
            return None
        if not _own(os.fstat(fd)) or not _slotted(os.pread(fd, 2 * SLOT + 1, 0)):
            os.close(fd)
            return None
        self._hold("_writing", fd)
        return fd

    def _replace(self, slot: bytes) -> None:
        """A new file of slots, this anchor in the first and the second blank, renamed over the anchor's name."""
        tmp = self.anchor_path.with_name(f".{ANCHOR_FILE}.{secrets.token_hex(6)}.tmp")
        # A new file, never one already there: a link planted under that name would have the anchor written through
        # it (onto whatever it names) and then renamed into the anchor's place.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            if os.write(fd, slot + b" " * (SLOT - 1) + b"\n") != 2 * SLOT:
                raise OSError(f"a new audit anchor {tmp} took only part of its slots")
            # Its data on disk before its name: ext4 writes a file's data out before a rename over another file
            # commits (auto_da_alloc, not every mount or filesystem), but not before one that takes a name no file
            # held (a state directory's first anchor), and the anchors after it are written in place: the name
            # committed within seconds, the data up to 30 s later, and an anchor that came back empty after a power
            # loss refused every audit write (as one that exchanged names with the last, renameat2 RENAME_EXCHANGE,
            # did). A file is made rarely now: the first anchor, one over a version before's, or in a link's place.
            os.fsync(fd)
            os.replace(tmp, self.anchor_path)
        except BaseException:
            with contextlib.suppress(OSError):  # the new anchor, not written or not renamed
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)


def _own(st: os.stat_result) -> bool:
    """Whether a file may have an anchor written into it in place: a regular file under no other name. A hard link
    (`ln`, `cp -al` of the state directory, another file linked under the anchor's name) is the same file, and would
    take the anchor too; such a file is replaced by a new one, as a symlink is."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink <= 1  # 0: a filesystem that does not count names


def chain_hash(key: bytes | None, data: bytes) -> str:
    """HMAC-SHA256 of `data` under the chain key; plain SHA-256 for a log written before the chain was keyed."""
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


#: A row's MACs are HMAC-SHA256 cut to its first 128 bits, in hex (HMAC-SHA-256-128, as IPsec and TLS cut theirs: a
#: forger without the key still has one chance in 2**128 a guess). Rows written before keep all 256 bits; a plain
#: SHA-256 chain (no key) is never cut.
TAG_HEX = 32


def chain_tag(key: bytes | None, data: bytes) -> str:
    """What a row's hash field holds for `data`: its HMAC cut to TAG_HEX digits (keyed), or its whole SHA-256."""
    whole = chain_hash(key, data)
    return whole if key is None else whole[:TAG_HEX]


def tag_holds(key: bytes | None, data: bytes, stored: object) -> bool:
    """Whether `stored` is `data`'s tag under the key: its whole HMAC (rows written before tags were cut) or the first
    TAG_HEX digits of it (keyed), its whole SHA-256 (no key)."""
    if not isinstance(stored, str):
        return False
    whole = chain_hash(key, data)
    if len(stored) == len(whole):
        return hmac.compare_digest(stored, whole)
    return key is not None and len(stored) == TAG_HEX and hmac.compare_digest(stored, whole[:TAG_HEX])
