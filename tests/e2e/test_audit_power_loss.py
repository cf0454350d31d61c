"""The audit anchor across a power loss: an ext4 filesystem shut down as if the power went (its journal not flushed)
must come back with an anchor written before, whole, never an empty or torn file that stops every audit write."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from goex_proxy.audit.seal import Anchor, Seal
from goex_proxy.errors import AuditError

pytestmark = pytest.mark.e2e

WRITE_THEN_POWER_LOSS = """
import fcntl, os, struct, sys, time
from pathlib import Path
from goex_proxy.audit.seal import Anchor, Seal
where, how = Path(sys.argv[1]), sys.argv[2]
if how == "anew":  # as a version before wrote it: the next anchor is a new file renamed over it
    (where / "audit.anchor").write_text(Anchor(1, "A", "a" * 64).dumps())
elif how == "in place":
    with Seal(where).locked():
        Seal(where).set_anchor(Anchor(1, "A", "a" * 64))
os.sync()
written = [Anchor(2, "B", "b" * 64)] if how == "anew" else [Anchor(2, "B", "b" * 64), Anchor(3, "C", "c" * 64)]
for anchor in [Anchor(1, "A", "a" * 64), *written] if how == "first" else written:
    with Seal(where).locked():
        Seal(where).set_anchor(anchor)  # a writer answers the requests of its row now
time.sleep(3)  # the journal commits the new names (every second here); file data is written out after 30 s
fd = os.open(where, os.O_RDONLY)
fcntl.ioctl(fd, 0x8004587D, struct.pack("I", 2))  # EXT4_IOC_SHUTDOWN, EXT4_GOING_FLAGS_NOLOGFLUSH: the power goes
"""


def run(*args: str | Path) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, timeout=60).stdout.strip()


@contextlib.contextmanager
def ext4(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """An ext4 filesystem of its own, mounted with its journal committed every second; what is yielded mounts it
    again (the journal replayed, as at the next boot after a power loss) and gives where."""
    if os.geteuid() != 0 or not (shutil.which("losetup") and shutil.which("mkfs.ext4")):
        pytest.skip("needs root, losetup and mkfs.ext4 to shut an ext4 filesystem down as a power loss does")
    image, mounted = tmp_path / "ext4.img", tmp_path / "mnt"
    mounted.mkdir()
    with image.open("wb") as f:
        f.truncate(64 << 20)
    run("mkfs.ext4", "-q", image)
    device = [run("losetup", "-f", "--show", image)]

    def remount() -> Path:
        run("umount", mounted)
        run("losetup", "-d", device[0])
        device[0] = run("losetup", "-f", "--show", image)
        run("mount", device[0], mounted)
        return mounted

    try:
        if subprocess.run(["mount", "-o", "commit=1", device[0], mounted], capture_output=True).returncode != 0:
            pytest.skip("cannot mount a loop device here")
        yield remount
    finally:
        subprocess.run(["umount", mounted], capture_output=True)
        subprocess.run(["losetup", "-d", device[0]], capture_output=True)


@pytest.mark.parametrize("how", ["anew", "in place", "first"])
def test_an_anchor_written_before_a_power_loss_is_whole_after_it(tmp_path: Path, how: str) -> None:
    """Made anew: ext4 writes a file's data out before a rename over another file commits (auto_da_alloc), so the
    anchor found after the power went is the last one or the new one. An anchor that took its name by exchanging names
    with the last (renameat2 RENAME_EXCHANGE) escaped that: the name was committed, the data never was, and the anchor
    came back empty, which stops every audit write until someone removes it. In place: each slot is the anchor it
    held or the one written over it, and one torn fails its check; the anchor found is one of those written. First
    (a state directory with no anchor yet): the file of slots took a name no file held, which ext4 does not make wait
    for its data, and the anchors after it were written in place: the name committed, the data not, the anchor came
    back empty and refused every audit write."""
    with ext4(tmp_path) as remount:
        subprocess.run([sys.executable, "-c", WRITE_THEN_POWER_LOSS, str(tmp_path / "mnt"), how], check=True,
                       timeout=60)
        mounted = remount()
        written = [Anchor(1, "A", "a" * 64), Anchor(2, "B", "b" * 64)] + ([Anchor(3, "C", "c" * 64)] * (how != "anew"))
        try:
            found: object = Seal(mounted).anchor()
        except AuditError as exc:  # said, not raised: its traceback would hold the file open, and the mount busy
            found = str(exc)
        assert found in written, found


WRITER_THEN_POWER_LOSS = """
import fcntl, os, struct, sys, time
from pathlib import Path
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
where = Path(sys.argv[1])
writer = AuditWriter(where / "audit.db", Seal(where))
for i in range(3):  # each anchored before its request would go on
    writer.record_intent({"id": f"1HF7YAWXRN00{i}", "ts": 1.0 + i, "agent": "bot", "method": "GET", "scheme": "https",
                          "host": "example.com", "port": 443, "path": "/", "url": "https://example.com/",
                          "req_headers": "[]", "decision": "allow"}).result(5)
time.sleep(3)  # the journal commits the new names (every second here); file data is written out after 30 s
fd = os.open(where, os.O_RDONLY)
fcntl.ioctl(fd, 0x8004587D, struct.pack("I", 2))  # the power goes
os._exit(0)
"""

WRITE_AFTER = """
import sys
from pathlib import Path
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
where = Path(sys.argv[1])
writer = AuditWriter(where / "audit.db", Seal(where))
writer.record_intent({"id": "1HF7YAWXRN00Z", "ts": 9.0, "agent": "bot", "method": "GET", "scheme": "https",
                      "host": "example.com", "port": 443, "path": "/", "url": "https://example.com/",
                      "req_headers": "[]", "decision": "allow"}).result(5)
writer.close()
"""


def test_a_new_audit_log_and_its_first_anchor_come_back_together_after_a_power_loss(tmp_path: Path) -> None:
    """SQLite syncs the log's WAL only at checkpoints (synchronous=NORMAL), and a new anchor file is synced before it
    takes its name: the first anchor of a state directory was on disk, the log it anchors not (not even its tables),
    and after a power loss every audit write was refused as if rows had been cut from the end. The log is synced
    before a new anchor file is made; the anchor may lag it, never lead it."""
    with ext4(tmp_path) as remount:
        subprocess.run([sys.executable, "-c", WRITER_THEN_POWER_LOSS, str(tmp_path / "mnt")], check=True, timeout=60,
                       capture_output=True)
        mounted = remount()
        after = subprocess.run([sys.executable, "-c", WRITE_AFTER, str(mounted)], capture_output=True, text=True,
                               timeout=60)
        assert after.returncode == 0, after.stderr
