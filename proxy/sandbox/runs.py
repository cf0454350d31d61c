"""A jailed run's file changes: its layer in the state directory, its record in the audit database, and what the person
decides about it (keep, undo, or discard what was never applied)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ids
from ..config import Config
from ..errors import GoexError, NotFound
from .changes import Change, Entry, entry_at, read_layer, unlocked

if TYPE_CHECKING:
    import sqlite3

#: The most bytes a run's files may hold that it never wrote (holes of sparse files) for it to be reviewed: every byte
#: of a changed file is hashed, and writing them costs the agent nothing.
MOST_UNWRITTEN = 4 << 30
#: States of a recorded run: its changes wait for the person, were applied, were taken back, or were dropped unapplied.
PENDING, KEPT, UNDONE, DISCARDED = "pending", "kept", "undone", "discarded"
_ENTRY_FIELDS = ("kind", "mode", "size", "sha256", "target")


class NotApplied(GoexError):
    """A run's changes could not be applied when it ended; they are held for the person instead."""


@dataclass(frozen=True)
class RunDir:
    """Where a run's copy-on-write layer lives while it runs and until the person decides (hidden from every jail)."""

    id: str
    path: Path

    @property
    def upper(self) -> Path:
        return self.path / "upper"

    @property
    def store(self) -> Path:
        """What each changed path held before the run, once the run is kept (for undo)."""
        return self.path / "before"


def runs_root(config: Config) -> Path:
    return config.state_dir / "runs"


def run_dir(config: Config, run_id: str) -> RunDir:
    """Where run `run_id` keeps its layer and, once kept, what it replaced."""
    return RunDir(run_id, runs_root(config) / run_id)


def new_run_dir(config: Config) -> RunDir:
    """A fresh run directory: the overlay's upper and work directories, the new root's mount point, an empty file."""
    ids.claim(config.audit_db)  # run ids share the audit log (file_runs) with other processes'
    run = run_dir(config, ids.RequestIds().new())
    try:
        runs_root(config).mkdir(mode=0o700, exist_ok=True)
        run.path.mkdir(mode=0o700)
        for name in ("upper", "work", "root"):
            (run.path / name).mkdir()
        fd = os.open(run.path / "empty", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.close(fd)
    except OSError as exc:
        raise GoexError(f"cannot make the run directory {run.path}: {exc.strerror or exc}") from None
    return run


def remove_tree(path: Path) -> None:
    """Remove a run's directory, including the overlay work directory the kernel left unreadable and whatever the
    agent made of its layer: directories it made unreadable, or nested deeper than Python's recursion or PATH_MAX
    reach (coreutils' `rm` walks any depth)."""
    if not os.path.lexists(path):
        return
    try:
        shutil.rmtree(path)
    except (OSError, RecursionError):
        if os.geteuid() != 0:
            subprocess.run(["chmod", "-R", "u+rwx", "--", os.fspath(path)], check=False, capture_output=True)
        done = subprocess.run(["rm", "-rf", "--", os.fspath(path)], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise GoexError(f"cannot remove {path}: {done.stderr.strip()}") from None


@dataclass(frozen=True)
class Run:
    """A recorded run and its changes."""

    id: str
    agent: str
    ts: float
    ended: float
    workspace: str
    command: list[str]
    exit_code: int | None
    state: str
    changes: tuple[Change, ...]

    @property
    def counts(self) -> dict[str, int]:
        out = {"added": 0, "changed": 0, "deleted": 0}
        for c in self.changes:
            out[c.action] += 1
        return out


def finish(config: Config, run: RunDir, agent: str, workspace: str, command: list[str], started: float,
           exit_code: int | None, apply: bool) -> Run | None:
    """After the jail ended: read what the run changed and record it; apply it to the workspace when `apply`, else hold
    it for review. None (and the layer removed) when it changed nothing."""
    try:
        unwritten = defuse(run.upper)
        if unwritten > MOST_UNWRITTEN:  # before reading a byte of it: every byte is hashed, holes too
            remove_tree(run.path)
            raise GoexError(f"run {run.id} made sparse files of {unwritten} bytes it never wrote (more than "
                            f"{MOST_UNWRITTEN}), which would take hours to review; nothing of it was applied, and its "
                            "changes were dropped")
        changes = read_layer(run.upper, Path(workspace))
    except OSError as exc:
        raise GoexError(f"cannot read run {run.id}'s changes in {run.upper}: {exc.strerror or exc}; they stay there, "
                        "nothing was applied") from None
    except RecursionError:
        remove_tree(run.path)
        raise GoexError(f"run {run.id} made directories nested too deep to review; nothing of it was applied, and its "
                        "changes were dropped") from None
    if not changes:
        remove_tree(run.path)
        return None
    from ..audit import store as audit  # a run that changed nothing (most of them) never pays for the audit store's import

    conn = audit.connect(config)
    try:
        with conn:
            conn.execute("INSERT INTO file_runs (id, agent, ts, ended, workspace, command, exit_code, changes, state) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (run.id, agent, started, time.time(), workspace, json.dumps(command), exit_code, len(changes),
                          PENDING))
            conn.executemany(
                "INSERT INTO file_changes (run_id, idx, path, action, "
                + ", ".join(f"{s}_{k}" for s in ("before", "after") for k in _ENTRY_FIELDS)
                + ") VALUES (?, ?, ?, ?" + ", ?" * 10 + ")",
                [(run.id, i, _db_path(c.path), c.action, *_entry_row(c.before), *_entry_row(c.after))
                 for i, c in enumerate(changes)])
    finally:
        conn.close()
    if apply:
        from .diff import listed
        from .workspace import Conflict

        raced = [c.path for c in changes if _touched_since(workspace, c.path, started)]
        if raced:
            raise NotApplied(f"run {run.id}'s file changes were not applied: {listed(raced)} changed in the workspace "
                             f"while it ran. They are held: `goex-proxy files diff {run.id}`, then `files keep "
                             f"{run.id}` or `files undo {run.id}`")
        try:
            return keep(config, run.id)
        except Conflict as exc:  # the person (or another run) changed the same paths meanwhile
            raise NotApplied(f"run {run.id}'s file changes were not applied: {exc}. They are held: `goex-proxy "
                             f"files diff {run.id}`, then `files keep {run.id} --force` or `files undo {run.id}`"
                             ) from None
    return load(config, run.id)


def _touched_since(workspace: str, path: str, started: float) -> bool:
    """Whether the workspace's own `path` was written, created, renamed or chmodded after `started` (the jail's writes
    never touch it: they land in the layer)."""
    try:
        return os.lstat(os.path.join(workspace, path)).st_ctime > started
    except OSError:
        return False


def defuse(directory: str | Path) -> int:
    """Take from a run's layer what would give power to whoever runs its files later, outside any jail: set-user-id
    and set-group-id bits, and file capabilities. (The workspace is often reachable by other users.) Returns how many
    bytes of its files were never written (the holes of sparse files: `truncate -s 1T` costs the agent nothing, and
    reviewing it hashes a terabyte)."""
    unwritten = 0
    with unlocked(os.fspath(directory), stat.S_IRUSR | stat.S_IXUSR):
        for entry in os.scandir(directory):
            st = entry.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                continue
            if mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(entry.path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
            with contextlib.suppress(OSError):
                os.removexattr(entry.path, "security.capability")
            if stat.S_ISREG(mode):
                unwritten += max(0, st.st_size - st.st_blocks * 512)
            if stat.S_ISDIR(mode):
                unwritten += defuse(entry.path)
    return unwritten


def _db_path(path: str) -> str | bytes:
    """A path as the database keeps it: text, or its bytes when it is not UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _entry_row(entry: Entry | None) -> tuple[Any, ...]:
    if entry is None:
        return (None,) * len(_ENTRY_FIELDS)
    return tuple(getattr(entry, k) for k in _ENTRY_FIELDS)


def _entry(row: sqlite3.Row, side: str) -> Entry | None:
    if row[f"{side}_kind"] is None:
        return None
    return Entry(row[f"{side}_kind"], row[f"{side}_mode"], row[f"{side}_size"], row[f"{side}_sha256"],
                 row[f"{side}_target"])


def _run(conn: sqlite3.Connection, row: sqlite3.Row) -> Run:
    changes = tuple(
        Change(os.fsdecode(c["path"]), c["action"], _entry(c, "before"), _entry(c, "after"))
        for c in conn.execute("SELECT * FROM file_changes WHERE run_id = ? ORDER BY idx", (row["id"],)))
    return Run(row["id"], row["agent"], row["ts"], row["ended"], row["workspace"], json.loads(row["command"]),
               row["exit_code"], row["state"], changes)


def load(config: Config, run_id: str) -> Run:
    """The recorded run `run_id`; NotFound if there is none."""
    conn = _connect(config)
    try:
        row = conn.execute("SELECT * FROM file_runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no file run {run_id!r} (see `goex-proxy files list`)")
        return _run(conn, row)
    finally:
        conn.close()


def recorded(config: Config, *, agent: str | None = None, since: float | None = None, limit: int | None = 50,
             states: tuple[str, ...] | None = None) -> list[Run]:
    """Recorded runs, newest first."""
    where: list[str] = ["1 = 1"]
    args: list[Any] = []
    if agent is not None:
        where.append("agent = ?")
        args.append(agent)
    if since is not None:
        where.append("ts >= ?")
        args.append(since)
    if states is not None:
        where.append(f"state IN ({', '.join('?' * len(states))})")
        args.extend(states)
    sql = f"SELECT * FROM file_runs WHERE {' AND '.join(where)} ORDER BY ts DESC, seq DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    conn = _connect(config)
    try:
        return [_run(conn, row) for row in conn.execute(sql, args)]
    finally:
        conn.close()


def requests_of(config: Config, run: Run) -> list[dict[str, Any]]:
    """The agent's audit rows made while the run was going on (its HTTP side), oldest first."""
    from ..audit import store as audit

    conn = audit.connect(config)
    try:
        rows = audit.query(conn, agent=run.agent, since=run.ts, limit=None, order="ASC")
    finally:
        conn.close()
    return [r for r in rows if r["ts"] <= run.ended and not r.get("undo_of")]


def contents(config: Config, run: Run) -> list[tuple[bytes | None, bytes | None]]:
    """For each change, the bytes of its file before and after (None where a side is no file, or is no longer at
    hand: a pending run's `before` is the workspace's, a kept run's is in its store)."""
    from .workspace import saved_at

    layer = run_dir(config, run.id)
    workspace = Path(run.workspace)
    out = []
    for i, change in enumerate(run.changes):
        if run.state == KEPT:
            before = _read(Path(saved_at(layer.store, i)), change.before) if layer.store.is_dir() else None
            after = _read_at(workspace, change.path, change.after)
        elif run.state == PENDING:
            before = _read_at(workspace, change.path, change.before)
            after = _read_at(layer.upper, change.path, change.after)
        else:
            before, after = _read_at(workspace, change.path, change.before), None
        out.append((before, after))
    return out


def _read_at(root: Path, rel: str, expected: Entry | None) -> bytes | None:
    """The file at `rel` under `root` if it is still the file `expected` describes (no symlink followed)."""
    if expected is None or expected.kind != "file" or entry_at(root, rel) != expected:
        return None
    return _read(root / rel, expected)


def _read(path: Path, expected: Entry | None) -> bytes | None:
    """The file's bytes, if it is one small enough to diff (a large one is described by its size alone)."""
    from .diff import MAX_DIFF_BYTES

    if expected is None or expected.kind != "file" or expected.size > MAX_DIFF_BYTES:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _connect(config: Config) -> sqlite3.Connection:
    import sqlite3

    from ..audit import store as audit

    conn = audit.connect(config)
    conn.row_factory = sqlite3.Row
    return conn


@contextlib.contextmanager
def _deciding(config: Config, run_id: str, allowed: tuple[str, ...], verb: str) -> Iterator[Run]:
    """One decision on a run at a time; the run, if its state allows `verb`."""
    load(config, run_id)  # NotFound for an id no run has, before it names a path (one too long was an OSError)
    path = run_dir(config, run_id).path
    lock = None
    if path.is_dir():
        lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        run = load(config, run_id)  # under the lock: another decision may just have been made
        if run.state not in allowed:
            raise GoexError(f"run {run_id} is {run.state}: nothing to {verb}")
        yield run
    finally:
        if lock is not None:
            os.close(lock)


def _set_state(config: Config, run_id: str, state: str) -> None:
    from ..audit import store as audit

    conn = audit.connect(config)
    try:
        with conn:
            conn.execute("UPDATE file_runs SET state = ?, decided = ? WHERE id = ?", (state, time.time(), run_id))
    finally:
        conn.close()


def keep(config: Config, run_id: str, *, force: bool = False) -> Run:
    """Apply a pending run's changes to its workspace, keeping what each path held before (for undo)."""
    with _deciding(config, run_id, (PENDING,), "keep") as run:
        from . import workspace as tree

        layer = run_dir(config, run_id)
        tree.keep(list(run.changes), layer.upper, Path(run.workspace), layer.store, force=force)
        _set_state(config, run_id, KEPT)
        for leftover in (layer.upper, layer.path / "work", layer.path / "root"):
            remove_tree(leftover)
    return replace(run, state=KEPT)


def undo(config: Config, run_id: str, *, force: bool = False) -> Run:
    """Take a run back: restore what a kept run changed, or drop a pending run's changes unapplied."""
    with _deciding(config, run_id, (PENDING, KEPT), "undo") as run:
        from . import workspace as tree

        layer = run_dir(config, run_id)
        if run.state == KEPT:
            tree.undo(list(run.changes), Path(run.workspace), layer.store, force=force)
        state = UNDONE if run.state == KEPT else DISCARDED
        _set_state(config, run_id, state)
    remove_tree(layer.path)
    return replace(run, state=state)
