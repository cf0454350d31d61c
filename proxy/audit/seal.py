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
from collections.abc import Iterator
from dataclasses import asdict, dataclass
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
        return json.dumps(asdict(self), separators=(",", ":")) + "\n"

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


class Seal:
    """Signs the chain with a key from the state directory and keeps its newest head there too."""

    def __init__(self, state_dir: Path) -> None:
        self.key_path = state_dir / KEY_FILE
        self.anchor_path = state_dir / ANCHOR_FILE
        self._key: bytes | None = None
        #: The anchor as last read or written, with the file's identity then: read again only when the file changed
        #: (every audit write checks it, and reading it cost more than the row).
        self._seen: tuple[tuple[int, int, int, int], Anchor] | None = None
        #: That file, held open: its inode number cannot go to another file while it is remembered (file times move
        #: a tick at a time on older kernels, so a newer anchor in the freed number could look the same).
        self._held: int | None = None
        self._holding = threading.Lock()
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
        try:
            stamp = _identity(os.stat(self.anchor_path))
            if self._seen is not None and self._seen[0] == stamp:
                return self._seen[1]
            fd = os.open(self.anchor_path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put there would wait for a writer
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditError(f"cannot read the audit anchor {self.anchor_path}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AuditError(f"the audit anchor {self.anchor_path} is not a regular file (a directory, a FIFO or a "
                                 "device was put in its place); move it aside")
            with open(fd, encoding="utf-8", closefd=False) as f:
                stamp, text = _identity(st), f.read()
            anchor = Anchor.loads(text, str(self.anchor_path))
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise AuditError(f"cannot read the audit anchor {self.anchor_path}: {exc.strerror or exc}") from None
            if isinstance(exc, UnicodeDecodeError):  # not text: no anchor, said as any other malformed one is
                raise AuditError(f"{self.anchor_path} is not an audit anchor (its bytes are not UTF-8)") from None
            raise
        self._remember(stamp, anchor, fd)
        return anchor

    def __del__(self) -> None:
        held = getattr(self, "_held", None)  # None too when __init__ did not get that far
        if held is not None:
            with contextlib.suppress(OSError):
                os.close(held)

    def _remember(self, stamp: tuple[int, int, int, int], anchor: Anchor, fd: int,
                  replaced: list[int] | None = None) -> None:
        """Remember `anchor` as the one in the file open as `fd` (kept open; the file remembered before is let go, or
        its descriptor added to `replaced` for the caller to close)."""
        with self._holding:
            let_go, self._held = self._held, fd
            self._seen = (stamp, anchor)
        if let_go is not None:
            if replaced is not None:
                replaced.append(let_go)
            else:
                os.close(let_go)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the anchor's lock (between writers of one state directory, in any process)."""
        lock = self.anchor_path.with_name(f".{ANCHOR_FILE}.lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open the audit anchor's lock {lock}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not self._swept:  # nobody is between making a temporary anchor and removing it while the lock is held
                for left in self.anchor_path.parent.glob(f".{ANCHOR_FILE}.*.tmp"):
                    with contextlib.suppress(OSError):  # a directory someone put there stays (it is no anchor)
                        left.unlink()
                self._swept = True
            yield
        finally:
            os.close(fd)

    def set_anchor(self, anchor: Anchor | None, replaced: list[int] | None = None) -> None:
        """Replace the anchor atomically (None: remove it); call under `locked()`. With `replaced`, the descriptor of
        the anchor replaced is added to it, not closed: its last close frees the file, which can take the filesystem
        a millisecond under load, and the audit writer has that done after its requests go on (`close_replaced`)."""
        if anchor is None:
            with contextlib.suppress(FileNotFoundError):
                self.anchor_path.unlink()
            return
        tmp = self.anchor_path.with_name(f".{ANCHOR_FILE}.{secrets.token_hex(6)}.tmp")
        # A new file, never one already there: a link planted under that name would have the anchor written through
        # it (onto whatever it names) and then renamed into the anchor's place.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as out:
                out.write(anchor.dumps())
            # Renamed over the last anchor, which makes ext4 write the new one's data out before the rename commits
            # (auto_da_alloc): after a power loss the anchor is the last or the new one, whole. Exchanging names with
            # the last (renameat2 RENAME_EXCHANGE) saved that ~0.1 ms and left an empty anchor that stops every write.
            os.replace(tmp, self.anchor_path)
            stamp = _identity(os.fstat(fd))  # the file under its name now (a rename is a change)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):  # the new anchor, not written or not renamed
                os.unlink(tmp)
            raise
        self._remember(stamp, anchor, fd, replaced)


def close_replaced(replaced: list[int]) -> None:
    """Close the descriptors `set_anchor` left in `replaced` (emptied)."""
    while replaced:
        with contextlib.suppress(OSError):
            os.close(replaced.pop())


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one version of a file from another: a replaced file is another inode, an edited one has new times
    (the inode number of a file a Seal remembers is not given to another: it holds the file open)."""
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size


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
