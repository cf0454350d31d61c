"""Reading a jailed run's copy-on-write layer (an overlayfs upper directory) as the list of changes it makes to the workspace.

The layer is in overlayfs format, as the kernel leaves it when mounted with `userxattr`: a character device 0:0 is a
whiteout (the path was deleted), a directory with the xattr `user.overlay.opaque` = b"y" hides every lower child it
does not hold itself, and any other entry is the new state of its path. Other `user.overlay.*` xattrs (origin, impure)
are bookkeeping and are ignored here. Nothing follows a symlink, in the layer or in the workspace; nothing is written,
except that, when not running as root, an entry its owner may not read (mode 000) is opened for a moment
(`unlocked`) and its mode put back.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FILE, DIR, SYMLINK, OTHER = "file", "dir", "symlink", "other"
ADDED, CHANGED, DELETED = "added", "changed", "deleted"
_OPAQUE = "user.overlay.opaque"
_READ_DIR = stat.S_IRUSR | stat.S_IXUSR
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """What one path is, as far as a person would notice: kind, permission bits, content or link target; never times."""

    kind: str  # FILE | DIR | SYMLINK | OTHER (fifo, socket, device)
    mode: int  # stat.S_IMODE bits
    size: int  # bytes for files, 0 otherwise
    sha256: str | None  # hex, files only
    target: str | None  # symlinks only, as os.readlink gives it


@dataclass(frozen=True)
class Change:
    """One path the run added, changed or deleted, relative to the workspace and '/'-separated (os.fsdecode names)."""

    path: str
    action: str  # ADDED | CHANGED | DELETED
    before: Entry | None  # None when added
    after: Entry | None  # None when deleted


def entry_at(root: Path, rel: str) -> Entry | None:
    """The entry at `rel` under `root`, read with lstat; None when it is absent or a parent is not a real directory."""
    where = os.fspath(root)
    as_root = os.geteuid() == 0
    with contextlib.ExitStack() as opened:
        for name in [part for part in rel.split("/") if part]:
            st = _lstat(where)
            if st is None or not stat.S_ISDIR(st.st_mode):
                return None
            if not as_root:
                opened.enter_context(unlocked(where, stat.S_IXUSR))
            where = os.path.join(where, name)
        st = _lstat(where)
        return None if st is None else _entry(where, st)


def read_layer(upper: Path, lower: Path) -> list[Change]:
    """Every real change the layer `upper` makes to the workspace `lower`, sorted by path.

    A copy-up that changed nothing (same bytes, same mode) is not a change, and times are ignored. A deleted directory
    lists each of its descendants as deleted too, and a new one each of its descendants as added; a path whose kind
    changed is one "changed" plus those deletions or additions below it. The root itself is never reported.
    """
    out: list[Change] = []
    _compare_dir(os.fspath(upper), os.fspath(lower), "", lower_is_dir=True, hidden=False, out=out)
    out.sort(key=lambda change: change.path)
    return out


@contextlib.contextmanager
def unlocked(path: str, bits: int) -> Iterator[None]:
    """Let the owner use `path` for a moment: add the owner `bits` it lacks (e.g. stat.S_IRUSR) and put its mode back
    after. Does nothing for root, whom modes do not stop, for entries someone else owns, and for symlinks."""
    euid = os.geteuid()
    if euid == 0:
        yield
        return
    st = os.lstat(path)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != euid or mode & bits == bits or stat.S_ISLNK(st.st_mode):
        yield
        return
    os.chmod(path, mode | bits)
    try:
        yield
    finally:
        os.chmod(path, mode)


def _compare_dir(upper: str, lower: str, prefix: str, *, lower_is_dir: bool, hidden: bool, out: list[Change]) -> None:
    """Compare the children of the layer directory `upper` with those of `lower` (absent unless `lower_is_dir`). When
    `upper` is opaque, or lies in an opaque one (`hidden`), lower children the layer does not hold are deleted."""
    with contextlib.ExitStack() as opened:
        opened.enter_context(unlocked(upper, _READ_DIR))
        if lower_is_dir:
            opened.enter_context(unlocked(lower, _READ_DIR))
        opaque = hidden or _is_opaque(upper)
        children = _children(upper)
        for name, path, ust in children:
            rel = prefix + name
            low = os.path.join(lower, name)
            lst = _lstat(low) if lower_is_dir else None
            if stat.S_ISCHR(ust.st_mode) and ust.st_rdev == 0:  # a whiteout
                if lst is not None:
                    _deleted(low, rel, lst, out)
                continue
            after = _entry(path, ust)
            before = None if lst is None else _entry(low, lst)
            if before is None:
                out.append(Change(rel, ADDED, None, after))
            elif before != after:
                out.append(Change(rel, CHANGED, before, after))
            if before is not None and before.kind == DIR and after.kind != DIR:
                _deleted_below(low, rel, out)
            if after.kind == DIR:
                below_is_dir = before is not None and before.kind == DIR
                _compare_dir(path, low, rel + "/", lower_is_dir=below_is_dir, hidden=opaque, out=out)
        if opaque and lower_is_dir:
            held = {name for name, _, _ in children}
            for name, path, lst in _children(lower):
                if name not in held:
                    _deleted(path, prefix + name, lst, out)


def _deleted(path: str, rel: str, st: os.stat_result, out: list[Change]) -> None:
    out.append(Change(rel, DELETED, _entry(path, st), None))
    if stat.S_ISDIR(st.st_mode):
        _deleted_below(path, rel, out)


def _deleted_below(path: str, rel: str, out: list[Change]) -> None:
    with unlocked(path, _READ_DIR):
        for name, child, st in _children(path):
            _deleted(child, f"{rel}/{name}", st, out)


def _children(path: str) -> list[tuple[str, str, os.stat_result]]:
    """Name, path and lstat of each entry in the directory `path`, which the caller has made readable."""
    with os.scandir(path) as it:
        return [(item.name, item.path, item.stat(follow_symlinks=False)) for item in it]


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, _OPAQUE, follow_symlinks=False) == b"y"
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return False
        raise


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _entry(path: str, st: os.stat_result) -> Entry:
    """The Entry for `path` whose lstat is `st`. A file is always hashed, exactly once (once for all its names, if it
    has several): every Entry records the sha256 of its content (keep and undo compare against it), so a size that
    differs spares no hashing."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        return Entry(FILE, mode, st.st_size, _linked_sha256(path, st) if st.st_nlink > 1 else _sha256(path), None)
    if stat.S_ISDIR(st.st_mode):
        return Entry(DIR, mode, 0, None, None)
    if stat.S_ISLNK(st.st_mode):
        return Entry(SYMLINK, mode, 0, None, os.readlink(path))
    return Entry(OTHER, mode, 0, None, None)


#: The sha256 of files with more than one name, by inode and times: a file linked under 10,000 names in a run's layer
#: is hashed once, not 10,000 times (a link costs the agent nothing, and each hash reads the whole file).
_LINKED: OrderedDict[tuple[int, ...], str] = OrderedDict()
_LINKED_KEPT = 4096


def _linked_sha256(path: str, st: os.stat_result) -> str:
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # a change of content changes ctime
    found = _LINKED.get(key)
    if found is None:
        found = _LINKED[key] = _sha256(path)
        if len(_LINKED) > _LINKED_KEPT:
            _LINKED.popitem(last=False)
    return found


def _sha256(path: str) -> str:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except PermissionError:
        with unlocked(path, stat.S_IRUSR):
            fd = os.open(path, flags)
    digest = hashlib.sha256()
    try:
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()
