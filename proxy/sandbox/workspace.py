"""Applying a run's changes to the person's workspace ("keep") and putting the workspace back as it was ("undo").

The store. `keep` creates the directory `store` (it must not exist yet, or be empty) and moves into it, as `store/<i>`,
what change number `i` (its position in the list given to keep and undo) replaces in the workspace whenever that is not
a directory: a file (bytes, mode and times), a symlink, a fifo. A directory needs nothing stored: its mode is in the
change, and its children are changes of their own. `undo` moves `store/<i>` back; while it runs, what it takes out of
the workspace waits in `store/<i>.after`, so that a failure can be rolled back, and is removed once undo has finished.
With `force`, whatever stands in the way is moved into the store too (a directory the changes do not account for
entirely, with its contents), never deleted by keep.

Both check every change before touching anything: the workspace must still hold what the change expects (keep: the
`before` entry, undo: the `after` one) or a Conflict names every path where it does not. Moving uses rename (no copy)
when the two directories share a filesystem, and copies otherwise. Nothing follows a symlink in the workspace: a parent
that is not a real directory is refused, even with `force`. An OSError midway rolls back what the call did so far.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from ..errors import GoexError
from ..printable import shown
from .changes import DIR, Change, Entry, entry_at
from .diff import listed

_RWX = stat.S_IRWXU
_OVERLAY_XATTR = "user.overlay."
_OK, _GONE, _MISSING, _NOT_DIR = "ok", "gone", "missing", "not a directory"


def saved_at(store: str | os.PathLike[str], index: int) -> str:
    """Where `keep` saves what change number `index` replaced in the workspace (see the store, above)."""
    return os.path.join(store, str(index))


class Conflict(GoexError):
    """The workspace changed since the run at these paths; nothing was changed."""

    def __init__(self, paths: list[str], action: str, *, forceable: bool = True) -> None:
        self.paths = paths
        self.action = action
        self.forceable = forceable
        named = listed(paths)
        if forceable:
            super().__init__(f"cannot {action}: the workspace changed since the run at {named}; nothing was changed "
                             "(--force overrides)")
        else:
            super().__init__(f"cannot {action}: a parent of {named} is not a real directory (a symlink or a file); "
                             "nothing was changed (--force does not override this)")


@dataclass(frozen=True)
class _Step:
    """Change number `index` seen from one direction: the workspace holds `old` and is to hold `new`."""

    index: int
    path: str
    old: Entry | None
    new: Entry | None


def keep(changes: list[Change], upper: Path, workspace: Path, store: Path, *, force: bool = False) -> None:
    """Make the workspace hold each change's `after`, taken from the run's layer `upper` (which it empties of what it
    takes), saving each replaced `before` in `store` for `undo`. Raise Conflict, changing nothing, when the workspace no
    longer holds a `before` (unless `force`)."""
    steps = _steps(changes, undoing=False)
    root, top = os.fspath(workspace), os.fspath(upper)
    with _failing("keep"), _Opened(root, steps) as opened:
        current = _check(steps, root, "keep", force, opened)
        for step in steps:
            if _is_content(step.new) and entry_at(upper, step.path) != step.new:
                raise GoexError(f"cannot keep: the run's layer no longer holds what was reviewed at {shown(step.path)}")
        saved = os.fspath(store)
        created = _make_store(saved)
        rename_in, rename_out = _same_fs(top, root), _same_fs(root, saved)
        work, scratch = _Work(root, "keep", force, opened), _Scratch(top)
        try:
            work.carry_out(steps, current, take=lambda step: (scratch.path(step.path), rename_in),
                           save=lambda step: (saved_at(saved, step.index), rename_out), strip=True)
        except GoexError:
            if created:
                _quietly(os.rmdir, saved)
            raise


def undo(changes: list[Change], workspace: Path, store: Path, *, force: bool = False) -> None:
    """Put back each change's `before` from `store` (as `keep` left it), so that the workspace is again what it was
    before the run. Raise Conflict, changing nothing, when the workspace no longer holds an `after` (unless `force`)."""
    steps = _steps(changes, undoing=True)
    root, saved = os.fspath(workspace), os.fspath(store)
    with _failing("undo"), _Opened(root, steps) as opened:
        current = _check(steps, root, "undo", force, opened)
        for step in steps:
            if _is_content(step.new) and not os.path.lexists(saved_at(saved, step.index)):
                raise GoexError(f"cannot undo: the store {saved} has no saved copy of {shown(step.path)}")
        rename = _same_fs(root, saved)
        work = _Work(root, "undo", force, opened)
        work.carry_out(steps, current, take=lambda step: (saved_at(saved, step.index), rename),
                       save=lambda step: (os.path.join(saved, f"{step.index}.after"), rename), strip=False)
    for step in steps:
        _quietly(_remove_tree, os.path.join(saved, f"{step.index}.after"))


def _steps(changes: list[Change], *, undoing: bool) -> list[_Step]:
    """The changes as steps in the given direction; raise GoexError for a path that is absolute, climbs out with '..',
    is not in normal form, or comes twice."""
    steps, seen = [], set()
    for index, change in enumerate(changes):
        path = change.path
        if path.startswith("/") or "\0" in path or any(part in ("", ".", "..") for part in path.split("/")):
            raise GoexError(f"refusing a change outside the workspace or not in normal form: {shown(path)!r}")
        if path in seen:
            raise GoexError(f"refusing a change list that names {shown(path)} twice")
        seen.add(path)
        old, new = (change.after, change.before) if undoing else (change.before, change.after)
        steps.append(_Step(index, path, old, new))
    return steps


class _Opened:
    """When not running as root: opens (u+rwx) every directory of the workspace on the way to a changed path, and the
    changed path itself when a directory, for the time of the call; `modes` holds their original modes, which are put
    back on leaving unless `settled` (the work then set them itself, with the final directory modes)."""

    def __init__(self, root: str, steps: list[_Step]) -> None:
        self.root = root
        self.steps = steps
        self.modes: dict[str, int] = {}
        self.settled = False

    def __enter__(self) -> _Opened:
        if os.geteuid() == 0:
            return self
        seen: set[str] = set()
        try:
            for step in self.steps:
                parts = step.path.split("/")
                for depth in range(len(parts) + 1):
                    rel = "/".join(parts[:depth])
                    if rel in seen:
                        continue
                    seen.add(rel)
                    if not self._open(rel):
                        break
        except OSError:
            self.restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.settled:
            self.restore()

    def _open(self, rel: str) -> bool:
        """Open the directory `rel` if it is a real one we own; False when it is not a directory."""
        path = os.path.join(self.root, rel) if rel else self.root
        st = _lstat(path)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return False
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid == os.geteuid() and mode & _RWX != _RWX:
            os.chmod(path, mode | _RWX)
            self.modes[rel] = mode
        return True

    def restore(self) -> None:
        for rel, mode in sorted(self.modes.items(), key=lambda item: _depth(item[0]), reverse=True):
            path = os.path.join(self.root, rel) if rel else self.root
            st = _lstat(path)
            if st is not None and stat.S_ISDIR(st.st_mode):
                _quietly(os.chmod, path, mode)


def _check(steps: list[_Step], root: str, action: str, force: bool, opened: _Opened) -> dict[str, Entry | None]:
    """What the workspace holds at each step's path; raise Conflict when it is not the step's `old` (unless `force`),
    and always when a parent is not a real directory."""
    by_path = {step.path: step for step in steps}
    conflicts: list[str] = []
    refused: list[str] = []
    current: dict[str, Entry | None] = {}
    for step in steps:
        parents = _parents(root, step.path, by_path)
        if parents == _NOT_DIR:
            refused.append(step.path)
            continue
        now = entry_at(Path(root), step.path) if parents == _OK else None
        if now is not None and now.kind == DIR and step.path in opened.modes:
            now = replace(now, mode=opened.modes[step.path])
        current[step.path] = now
        if parents == _MISSING or now != step.old:
            conflicts.append(step.path)
        if now is not None and now.kind == DIR and not _is_dir(step.new):
            conflicts.extend(child for child in _listdir(root, step.path) if child not in by_path)
    if refused:
        raise Conflict(sorted(refused), action, forceable=False)
    if conflicts and not force:
        raise Conflict(sorted(set(conflicts)), action)
    return current


def _parents(root: str, rel: str, by_path: dict[str, _Step]) -> str:
    """How the parents of `rel` stand in the workspace: _OK (all real directories); _GONE (one is absent or not a
    directory, and the steps make it a directory or replace it, so `rel` is rightly absent now); _MISSING (one is
    absent and nothing creates it); _NOT_DIR (one is a symlink or a file the steps do not account for)."""
    parts = rel.split("/")
    where = root
    for depth in range(1, len(parts)):
        where = os.path.join(where, parts[depth - 1])
        st = _lstat(where)
        planned = by_path.get("/".join(parts[:depth]))
        if st is None:
            return _GONE if planned is not None and _is_dir(planned.new) else _MISSING
        if not stat.S_ISDIR(st.st_mode):
            return _GONE if planned is not None and planned.old is not None and planned.old.kind != DIR else _NOT_DIR
    return _OK


class _Work:
    """Carries out steps on the workspace, journaling the inverse of each action, so that a failure is rolled back."""

    def __init__(self, root: str, action: str, force: bool, opened: _Opened) -> None:
        self.root = root
        self.action = action
        self.force = force
        self.opened = opened
        self.journal: list[Callable[[], object]] = []

    def carry_out(self, steps: list[_Step], current: dict[str, Entry | None], *, take: Callable[[_Step], tuple[str, bool]],
                  save: Callable[[_Step], tuple[str, bool]], strip: bool) -> None:
        """Remove the old entries deepest first (non-directories into `save`), create directories shallowest first,
        move the new files, symlinks and fifos in from `take`, then set directory modes deepest first. `take` and `save`
        give a path and whether rename can reach it."""
        path = ""
        try:
            removals = [step for step in steps if current[step.path] is not None
                        and not (_is_dir(current[step.path]) and _is_dir(step.new))]
            for step in sorted(removals, key=lambda step: _depth(step.path), reverse=True):
                path = step.path
                self._remove(step, current[step.path], *save(step))
            creations = [step for step in steps if _is_dir(step.new) and not _is_dir(current[step.path])]
            for step in sorted(creations, key=lambda step: _depth(step.path)):
                path = step.path
                self._parents(step.path)
                self._do(partial(os.mkdir, self._abs(step.path), 0o700), partial(os.rmdir, self._abs(step.path)))
            for step in steps:
                if _is_content(step.new):
                    path = step.path
                    self._place(step, *take(step), strip=strip)
            modes = dict(self.opened.modes)
            modes.update((step.path, step.new.mode) for step in steps if step.new is not None and step.new.kind == DIR)
            for path, mode in sorted(modes.items(), key=lambda item: _depth(item[0]), reverse=True):
                self._chmod(path, mode)
            self.opened.settled = True
        except OSError as exc:
            failed = _roll_back(self.journal)
            after = "everything done so far was rolled back" if not failed else f"{failed} step(s) could not be rolled back"
            raise GoexError(f"could not {self.action} {shown(path) or '.'}: {exc.strerror or exc}; {after}") from None

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _do(self, act: Callable[[], object], undo: Callable[[], object]) -> None:
        act()
        self.journal.append(undo)

    def _remove(self, step: _Step, now: Entry | None, saved: str, rename: bool) -> None:
        path = self._abs(step.path)
        if now is not None and now.kind == DIR:
            mode = stat.S_IMODE(os.lstat(path).st_mode)  # as _Opened left it: a rollback puts children back in first
            try:
                os.rmdir(path)
            except OSError as exc:
                if not (self.force and exc.errno in (errno.ENOTEMPTY, errno.EEXIST)):
                    raise
            else:
                self.journal.append(partial(_mkdir, path, mode))
                return
        self._do(partial(_move, path, saved, rename), partial(_move, saved, path, rename))

    def _place(self, step: _Step, source: str, rename: bool, *, strip: bool) -> None:
        path = self._abs(step.path)
        self._parents(step.path)
        self._do(partial(_move, source, path, rename), partial(_move, path, source, rename))
        if strip:
            _strip_overlay_xattrs(path)

    def _parents(self, rel: str) -> None:
        """With `force`, create the parents of `rel` that are missing (the check refused any that is not a directory)."""
        if not self.force:
            return
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            path = self._abs("/".join(parts[:depth]))
            if _lstat(path) is None:
                self._do(partial(os.mkdir, path), partial(os.rmdir, path))

    def _chmod(self, rel: str, mode: int) -> None:
        path = self._abs(rel)
        st = _lstat(path)
        if st is not None and stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
            self._do(partial(os.chmod, path, mode), partial(os.chmod, path, stat.S_IMODE(st.st_mode)))


def _roll_back(journal: list[Callable[[], object]]) -> int:
    """Run the inverses of what was done, last first; the number that failed."""
    failed = 0
    for inverse in reversed(journal):
        try:
            inverse()
        except OSError:
            failed += 1
    journal.clear()
    return failed


def _move(source: str, target: str, rename: bool) -> None:
    """Move `source` to `target`: by rename when `rename` (both on one filesystem), else (or on EXDEV) by copying
    content, mode and times (a symlink as a symlink, a fifo as a new fifo) and removing `source`."""
    if rename:
        try:
            os.rename(source, target)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    st = os.lstat(source)
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.copytree(source, target, symlinks=True)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(source), target)
        elif stat.S_ISREG(st.st_mode):
            shutil.copy2(source, target, follow_symlinks=False)
        else:
            os.mkfifo(target, stat.S_IMODE(st.st_mode))
    except OSError:
        _quietly(_remove_tree, target)
        raise
    _remove_tree(source)


def _mkdir(path: str, mode: int) -> None:
    os.mkdir(path, 0o700)
    os.chmod(path, mode)


def _remove_tree(path: str) -> None:
    st = _lstat(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _strip_overlay_xattrs(path: str) -> None:
    """Remove the overlayfs bookkeeping (`user.overlay.*` xattrs) from a file just taken from the run's layer."""
    try:
        names = [name for name in os.listxattr(path, follow_symlinks=False) if name.startswith(_OVERLAY_XATTR)]
        for name in names:
            try:
                os.removexattr(path, name, follow_symlinks=False)
            except PermissionError:  # user xattrs need write permission, even for the owner
                mode = stat.S_IMODE(os.lstat(path).st_mode)
                os.chmod(path, mode | stat.S_IWUSR)
                try:
                    os.removexattr(path, name, follow_symlinks=False)
                finally:
                    os.chmod(path, mode)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.ENODATA):
            raise


class _Scratch:
    """The run's layer as a source of moves. When not root, the directories on the way to a path taken from it are
    opened (u+rwx) for good: the layer is the run's scratch, so their modes need not be put back."""

    def __init__(self, upper: str) -> None:
        self.upper = upper
        self.is_root = os.geteuid() == 0
        self.opened: set[str] = set()

    def path(self, rel: str) -> str:
        if not self.is_root:
            parts = rel.split("/")
            for depth in range(len(parts)):
                where = "/".join(parts[:depth])
                if where not in self.opened:
                    self.opened.add(where)
                    path = os.path.join(self.upper, where) if where else self.upper
                    mode = stat.S_IMODE(os.lstat(path).st_mode)
                    if mode & _RWX != _RWX:
                        os.chmod(path, mode | _RWX)
        return os.path.join(self.upper, rel)


def _make_store(path: str) -> bool:
    """Create the store directory (owner only); True when this call created it. Refuse one that holds anything."""
    try:
        os.makedirs(path, mode=0o700)
        return True
    except FileExistsError:
        if not os.path.isdir(path) or os.path.islink(path) or os.listdir(path):
            raise GoexError(f"cannot keep: the store {path} already exists and is not an empty directory") from None
        return False


def _listdir(root: str, rel: str) -> list[str]:
    with os.scandir(os.path.join(root, rel)) as it:
        return [f"{rel}/{item.name}" for item in it]


def _same_fs(one: str, other: str) -> bool:
    """Whether rename can move between the two directories (a missing one is never moved from or to)."""
    try:
        return os.stat(one).st_dev == os.stat(other).st_dev
    except FileNotFoundError:
        return True


@contextlib.contextmanager
def _failing(action: str) -> Iterator[None]:
    """Report an OSError met before anything was changed (while checking) as a GoexError, in one line."""
    try:
        yield
    except OSError as exc:
        where = f" {shown(os.fsdecode(exc.filename))}" if exc.filename is not None else ""
        raise GoexError(f"could not {action}:{where}: {exc.strerror or exc}; nothing was changed") from None


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _is_dir(entry: Entry | None) -> bool:
    return entry is not None and entry.kind == DIR


def _is_content(entry: Entry | None) -> bool:
    """Whether `entry` is something a change carries (a file, symlink or fifo) rather than a directory or nothing."""
    return entry is not None and entry.kind != DIR


def _depth(rel: str) -> int:
    return rel.count("/") + (1 if rel else 0)


def _quietly(act: Callable[..., object], *args: object) -> None:
    try:
        act(*args)
    except OSError:
        pass
