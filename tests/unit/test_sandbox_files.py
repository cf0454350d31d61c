"""A run's file changes on a real overlayfs: reading its layer, keeping it on the workspace, undoing it, and refusing to
when the person changed the workspace in between."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from goex_proxy.errors import GoexError
from goex_proxy.sandbox.changes import Change, Entry, entry_at, read_layer
from goex_proxy.sandbox.workspace import Conflict, keep, undo

LATIN = os.fsdecode(b"caf\xe9.txt")  # not UTF-8: a surrogate escape

#: What the agent does inside the mount: every kind of change, and some that change nothing.
SCRIPT = r"""
printf 'new\n' > edit.txt
rm gone.txt
rm -r tree
mv old_name.txt new_name.txt
chmod 755 script.sh
ln -sfn same.txt link
rm becomes_dir && mkdir becomes_dir && printf 'in\n' > becomes_dir/inner.txt
rm -r becomes_file && printf 'now a file\n' > becomes_file
printf 'same\n' > same.txt
touch touched.txt
chmod 700 docs
rm -r redo && mkdir redo && printf 'x' > redo/x
rm -r nest && mkdir -p nest/sub && printf 'b\n' > nest/sub/b.txt
printf 'added\n' > new.txt
ln -s new.txt newlink
mkdir -p deep/er/nest && printf 'deep\n' > deep/er/nest/file.txt
"$PY" -c "import sqlite3; c = sqlite3.connect('db.sqlite'); c.execute('CREATE TABLE t (x)'); c.commit(); c.close()"
"$PY" -c "import sqlite3; c = sqlite3.connect('app.db'); c.execute('INSERT INTO t VALUES (2)'); c.commit(); c.close()"
printf 'latin changed\n' > "$(printf 'caf\351.txt')"
"""

EXPECTED = [
    ("app.db", "changed"),
    ("becomes_dir", "changed"), ("becomes_dir/inner.txt", "added"),
    ("becomes_file", "changed"), ("becomes_file/inner.txt", "deleted"),
    (LATIN, "changed"),
    ("db.sqlite", "added"),
    ("deep", "added"), ("deep/er", "added"), ("deep/er/nest", "added"), ("deep/er/nest/file.txt", "added"),
    ("docs", "changed"),
    ("edit.txt", "changed"),
    ("gone.txt", "deleted"),
    ("link", "changed"),
    ("nest/a.txt", "deleted"), ("nest/sub/c.txt", "deleted"),
    ("new.txt", "added"), ("new_name.txt", "added"), ("newlink", "added"),
    ("old_name.txt", "deleted"),
    ("redo/y", "deleted"),
    ("script.sh", "changed"),
    ("tree", "deleted"), ("tree/a.txt", "deleted"), ("tree/sub", "deleted"), ("tree/sub/b.txt", "deleted"),
]

Listing = dict[str, tuple[str, int, "str | None", "str | None"]]


def listing(root: Path) -> Listing:
    """Every path under `root` (not `root` itself), with its kind, mode, sha256 (files) and target (symlinks). A
    directory its owner may not read is opened for a moment when not running as root."""
    found: Listing = {}

    def walk(path: str, prefix: str) -> None:
        for item in _scan(path):
            rel, st = prefix + item.name, item.stat(follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                with _opened(item.path, mode, 0o400):
                    found[rel] = ("file", mode, hashlib.sha256(Path(item.path).read_bytes()).hexdigest(), None)
            elif stat.S_ISLNK(st.st_mode):
                found[rel] = ("symlink", mode, None, os.readlink(item.path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", mode, None, None)
                with _opened(item.path, mode, 0o500):
                    walk(item.path, rel + "/")
            else:
                found[rel] = ("other", mode, None, None)

    walk(os.fspath(root), "")
    return found


@contextlib.contextmanager
def _opened(path: str, mode: int, bits: int) -> Iterator[None]:
    """Add the owner `bits` to `path`'s `mode` for a moment, when they are missing and modes stop us (not root)."""
    locked = os.geteuid() != 0 and mode & bits != bits
    if locked:
        os.chmod(path, mode | bits)
    try:
        yield
    finally:
        if locked:
            os.chmod(path, mode)


def _scan(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda item: item.name)


@dataclass(frozen=True)
class Run:
    """A finished run: the workspace (lower), the run's layer (upper), a copy of the merged view, and a store."""

    workspace: Path
    upper: Path
    merged: Path
    store: Path

    def changes(self) -> list[Change]:
        changes: list[Change] = read_layer(self.upper, self.workspace)
        return changes


def _workspace(root: Path) -> Path:
    """A workspace with something for each kind of change the script makes."""
    ws = root / "ws"
    for rel, text in [("edit.txt", "old\n"), ("gone.txt", "bye\n"), ("tree/a.txt", "a\n"), ("tree/sub/b.txt", "b\n"),
                      ("old_name.txt", "moving\n"), ("script.sh", "#!/bin/sh\n"), ("becomes_dir", "file\n"),
                      ("becomes_file/inner.txt", "inner\n"), ("same.txt", "same\n"), ("touched.txt", "t\n"),
                      ("docs/readme.txt", "read me\n"), ("redo/x", "x"), ("redo/y", "y"), ("nest/a.txt", "a\n"),
                      ("nest/sub/b.txt", "b\n"), ("nest/sub/c.txt", "c\n"), ("untouched/keep.txt", "k\n"), (LATIN, "latin\n")]:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    (ws / "script.sh").chmod(0o644)
    (ws / "docs").chmod(0o755)
    (ws / "link").symlink_to("edit.txt")
    conn = sqlite3.connect(ws / "app.db")
    with conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    return ws


def run_in_overlay(root: Path, workspace: Path, script: str) -> Run:
    """Mount an overlay over `workspace` in a user namespace, run `script` in it, and copy the merged view aside."""
    run = root / "run"
    for name in ("upper", "work", "mnt"):
        (run / name).mkdir(parents=True)
    mount = f"mount -t overlay overlay -o lowerdir={workspace},upperdir=upper,workdir=work,userxattr mnt"
    subprocess.run(["unshare", "-Urm", "sh", "-ec", f"{mount}\ncd mnt\n{script}\ncp -a . ../merged"], cwd=run,
                   env={**os.environ, "PY": sys.executable}, check=True)
    return Run(workspace, run / "upper", run / "merged", run / "store")


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return run_in_overlay(tmp_path, _workspace(tmp_path), SCRIPT)


def test_read_layer_lists_exactly_the_real_changes(run: Run) -> None:
    """read_layer reports every kind of change, deleted and added trees in full, and no copy-up that changed nothing."""
    changes = run.changes()
    assert [(c.path, c.action) for c in changes] == EXPECTED
    by_path = {c.path: c for c in changes}
    assert by_path["link"].before == Entry("symlink", 0o777, 0, None, "edit.txt")
    assert by_path["link"].after == Entry("symlink", 0o777, 0, None, "same.txt")
    assert by_path["script.sh"].before is not None and by_path["script.sh"].before.mode == 0o644
    assert by_path["script.sh"].after is not None and by_path["script.sh"].after.mode == 0o755
    assert by_path["becomes_dir"].after is not None and by_path["becomes_dir"].after.kind == "dir"
    assert by_path["edit.txt"].after == entry_at(run.merged, "edit.txt")


def test_keep_makes_the_workspace_the_merged_view(run: Run) -> None:
    """keep leaves the workspace equal, path by path (kind, mode, content, target), to what the agent saw."""
    keep(run.changes(), run.upper, run.workspace, run.store)
    assert listing(run.workspace) == listing(run.merged)


def test_undo_after_keep_restores_the_tree_byte_for_byte(run: Run) -> None:
    """undo after keep gives back exactly the tree from before the run."""
    before = listing(run.workspace)
    changes = run.changes()
    keep(changes, run.upper, run.workspace, run.store)
    undo(changes, run.workspace, run.store)
    assert listing(run.workspace) == before
    assert list(run.store.iterdir()) == []


def test_an_edit_since_the_run_blocks_keep_until_forced(run: Run) -> None:
    """An edit by the person to a changed path makes keep raise Conflict naming it and change nothing; force keeps
    anyway, and undo then gives back the person's edit."""
    changes = run.changes()
    (run.workspace / "edit.txt").write_text("the person's edit\n")
    edited = listing(run.workspace)
    with pytest.raises(Conflict) as raised:
        keep(changes, run.upper, run.workspace, run.store)
    assert raised.value.paths == ["edit.txt"]
    assert "edit.txt" in str(raised.value) and "--force" in str(raised.value)
    assert listing(run.workspace) == edited
    assert not run.store.exists()
    keep(changes, run.upper, run.workspace, run.store, force=True)
    assert listing(run.workspace) == listing(run.merged)
    undo(changes, run.workspace, run.store, force=True)
    assert listing(run.workspace) == edited


def test_an_edit_since_keep_blocks_undo_until_forced(run: Run) -> None:
    """An edit by the person to a kept path makes undo raise Conflict naming it and change nothing; force undoes anyway."""
    before = listing(run.workspace)
    changes = run.changes()
    keep(changes, run.upper, run.workspace, run.store)
    (run.workspace / "new.txt").write_text("the person's edit\n")
    edited = listing(run.workspace)
    with pytest.raises(Conflict) as raised:
        undo(changes, run.workspace, run.store)
    assert raised.value.paths == ["new.txt"]
    assert listing(run.workspace) == edited
    undo(changes, run.workspace, run.store, force=True)
    assert listing(run.workspace) == before


def test_a_file_added_inside_a_deleted_directory_is_a_conflict(run: Run) -> None:
    """A file the person added to a directory the run deleted is named as a conflict, and force moves it aside, not away."""
    changes = run.changes()
    (run.workspace / "tree" / "mine.txt").write_text("mine\n")
    with pytest.raises(Conflict) as raised:
        keep(changes, run.upper, run.workspace, run.store)
    assert raised.value.paths == ["tree/mine.txt"]
    keep(changes, run.upper, run.workspace, run.store, force=True)
    assert listing(run.workspace) == listing(run.merged)
    kept_aside = [path for path in run.store.rglob("mine.txt")]
    assert len(kept_aside) == 1 and kept_aside[0].read_text() == "mine\n"


def test_overlay_xattrs_never_reach_the_workspace(run: Run) -> None:
    """The overlayfs bookkeeping xattrs on the layer's files (user.overlay.origin) are gone once the files are kept."""
    assert "user.overlay.origin" in os.listxattr(run.upper / "edit.txt")
    keep(run.changes(), run.upper, run.workspace, run.store)
    for rel in listing(run.workspace):
        names = os.listxattr(run.workspace / rel, follow_symlinks=False)
        assert not [name for name in names if name.startswith("user.overlay.")], rel


def test_a_symlinked_parent_is_refused_even_with_force(run: Run, tmp_path: Path) -> None:
    """A symlink planted where a changed path's parent directory should be makes keep and undo refuse, even with force,
    and nothing is written through it."""
    changes = run.changes()
    outside = tmp_path / "outside"
    outside.mkdir()
    (run.workspace / "deep").symlink_to(outside)
    planted = listing(run.workspace)
    for force in (False, True):
        with pytest.raises(Conflict) as raised:
            keep(changes, run.upper, run.workspace, run.store, force=force)
        assert raised.value.paths == ["deep/er", "deep/er/nest", "deep/er/nest/file.txt"]
        assert "not a real directory" in str(raised.value)
    assert listing(run.workspace) == planted and list(outside.iterdir()) == []
    (run.workspace / "deep").unlink()
    keep(changes, run.upper, run.workspace, run.store)
    shutil.move(run.workspace / "becomes_dir", outside / "becomes_dir")
    (run.workspace / "becomes_dir").symlink_to(outside / "becomes_dir")
    with pytest.raises(Conflict) as raised:
        undo(changes, run.workspace, run.store, force=True)
    assert raised.value.paths == ["becomes_dir/inner.txt"]
    assert (outside / "becomes_dir" / "inner.txt").read_text() == "in\n"


def test_paths_outside_the_workspace_are_rejected(tmp_path: Path) -> None:
    """A change whose path is absolute or climbs out with '..' is refused before anything is looked at."""
    entry = Entry("file", 0o644, 1, "0" * 64, None)
    for path in ("../escape", "/etc/passwd", "a/../../b", "a//b"):
        with pytest.raises(GoexError, match="outside the workspace"):
            keep([Change(path, "added", None, entry)], tmp_path, tmp_path, tmp_path / "store")
        with pytest.raises(GoexError, match="outside the workspace"):
            undo([Change(path, "added", None, entry)], tmp_path, tmp_path / "store")


def test_a_failure_midway_is_rolled_back(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError at any rename in keep or undo undoes what that call had done and names the path in one line; the
    call then succeeds when retried."""
    before, merged = listing(run.workspace), listing(run.merged)
    changes = run.changes()
    rename = os.rename
    for action, retry, unchanged, done in [
        ("keep", partial(keep, changes, run.upper, run.workspace, run.store), before, merged),
        ("undo", partial(undo, changes, run.workspace, run.store), merged, before),
    ]:
        for fail_at in range(1, 100):
            calls: list[str] = []

            def failing_rename(source: str, target: str, calls: list[str] = calls, fail_at: int = fail_at) -> None:
                calls.append(source)
                if len(calls) == fail_at:
                    raise OSError(errno.ENOSPC, "No space left on device")
                rename(source, target)

            monkeypatch.setattr(os, "rename", failing_rename)
            try:
                retry()
            except GoexError as exc:
                assert str(exc).startswith(f"could not {action} "), exc
                assert str(exc).endswith("No space left on device; everything done so far was rolled back"), exc
                assert "\n" not in str(exc)
            else:
                break
            finally:
                monkeypatch.undo()
            assert listing(run.workspace) == unchanged, (action, fail_at)
        assert fail_at > 20 and listing(run.workspace) == done


def test_a_store_on_another_filesystem_is_copied_to(run: Run) -> None:
    """keep and undo copy instead of renaming when the store is on another filesystem, with the same result."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == run.workspace.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    store = shm / f"goex-test-store-{os.getpid()}"
    before = listing(run.workspace)
    changes = run.changes()
    try:
        keep(changes, run.upper, run.workspace, store)
        assert listing(run.workspace) == listing(run.merged)
        undo(changes, run.workspace, store)
        assert listing(run.workspace) == before
    finally:
        shutil.rmtree(store, ignore_errors=True)


def test_entries_their_owner_cannot_read_or_write(tmp_path: Path) -> None:
    """Directories made mode 000 or read-only and a file of mode 000, in the workspace and in the run's layer, are
    read, kept and undone like any other entry (when not root, by opening them for a moment)."""
    ws = tmp_path / "ws"
    for rel, text in [("open/old.txt", "old\n"), ("ro/a.txt", "a\n"), ("sealed.txt", "sealed\n")]:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    (ws / "ro").chmod(0o555)
    (ws / "sealed.txt").chmod(0)
    script = ("mkdir locked && printf s > locked/secret && chmod 000 locked && printf 'new\\n' > open/old.txt && chmod 000 open"
              " && printf b > ro/b.txt && chmod 400 sealed.txt")
    run = run_in_overlay(tmp_path, ws, script)
    try:
        changes = run.changes()
        assert [(c.path, c.action) for c in changes] == [("locked", "added"), ("locked/secret", "added"), ("open", "changed"),
                                                         ("open/old.txt", "changed"), ("ro/b.txt", "added"),
                                                         ("sealed.txt", "changed")]
        before = listing(ws)
        keep(changes, run.upper, ws, run.store)
        assert listing(ws) == listing(run.merged)
        undo(changes, ws, run.store)
        assert listing(ws) == before
    finally:
        for path in (ws / "locked", ws / "open", ws / "ro", run.merged / "locked", run.merged / "open", run.merged / "ro"):
            if path.is_dir():
                path.chmod(0o755)
