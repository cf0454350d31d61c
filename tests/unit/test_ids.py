"""Request ids: sorted by time, and unique across the processes that write one audit log."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

from goex_proxy import ids

MAKE = """
import sys, time
from pathlib import Path
from goex_proxy import ids
ids.claim(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()              # start together
made = [ids.RequestIds().new() for _ in range(int(sys.argv[2]))]
print("\\n".join(made))
"""


def _makers(db: Path, count: int, n: int) -> list[subprocess.Popen[str]]:
    procs = [subprocess.Popen([sys.executable, "-c", MAKE, str(db), str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(count)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return procs


def test_processes_writing_one_log_never_make_the_same_id(tmp_path: Path) -> None:
    # Three processes at once, each making ids as fast as it can, in the same milliseconds: with a random start per
    # millisecond (the old scheme) they collided about once in a thousand milliseconds they shared.
    procs = _makers(tmp_path / "audit.db", 3, 60_000)
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    every: list[str] = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        made = out.split()
        assert made == sorted(made) and len(set(made)) == len(made)  # one process: in order, no repeats
        every += made
    assert len(set(every)) == len(every)
    assert len({ids.tag_of(m) for m in every}) == 3  # three tags were used


def test_a_tag_is_held_while_its_process_lives_and_free_after(tmp_path: Path, monkeypatch) -> None:
    # As a process that has claimed no tag yet: one that has keeps it for every log (`claim`), and an earlier test
    # in this process claimed one, which the other process drew at random once in 1,024 runs.
    monkeypatch.setattr(ids._CLOCK, "claimed", {})
    monkeypatch.setattr(ids._CLOCK, "tag", ids._CLOCK.tag)
    monkeypatch.setattr(ids._CLOCK, "n", ids._CLOCK.n)
    db = tmp_path / "audit.db"
    other = _makers(db, 1, 1)[0]
    assert other.stdin is not None
    other.stdin.write("go\n")
    other.stdin.flush()
    theirs = ids.tag_of(other.stdout.readline().strip()) if other.stdout else -1
    ids.claim(db)  # this process, while the other lives: another tag
    assert ids._CLOCK.tag != theirs
    assert ids.tag_of(ids.RequestIds().new()) == ids._CLOCK.tag
    lock = tmp_path / ".audit.db.ids" / f"{theirs:04d}"
    with lock.open("rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise AssertionError("the live process's tag was free")
        except BlockingIOError:
            pass
        other.communicate(timeout=30)
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the process ended: its tag is free again
    ids.release(db)


def test_ids_sort_by_time_and_keep_their_shape() -> None:
    made = [ids.RequestIds().new() for _ in range(5000)]
    assert made == sorted(made) and len(set(made)) == 5000
    assert all(ids.is_request_id(m) for m in made)


def test_a_closed_writer_lets_go_of_its_tag(tmp_path: Path) -> None:
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter

    first, second = AuditWriter(tmp_path / "a.db", Seal(tmp_path)), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    folder = ids.tags_folder(tmp_path / "a.db")
    assert ids._CLOCK.claimed[folder][1] == 2
    first.close()
    assert folder in ids._CLOCK.claimed  # the other writer still writes
    second.close()
    assert folder not in ids._CLOCK.claimed
