"""A jail's process cap as a pids cgroup, for a jail run as root: the kernel does not hold root (uid 0 outside) to
RLIMIT_NPROC, which caps the jail of anyone else (`jailinit.limit_processes`)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

#: Where the kernel says the mounts of this process are.
_MOUNTINFO = Path("/proc/self/mountinfo")
_CGROUPS = Path("/proc/self/cgroup")
#: The prefix of the cgroups made here: one per jail, removed when it ends (or by the next jail, if it was left).
PREFIX = "goex-jail-"
#: A cgroup left this long ago is swept; a younger one may be a jail's that is still putting its process in.
_SWEEP_AFTER_S = 60.0


def _unescape(field: str) -> str:
    """A path as mountinfo writes it (space, tab, newline and backslash as octal escapes)."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def _pids_parent(mountinfo: str, cgroups: str) -> Path | None:
    """The directory of this process's own pids cgroup (cgroup v1's pids hierarchy, or cgroup v2 where its pids
    controller is given to children), from /proc/self/mountinfo and /proc/self/cgroup; None when there is none."""
    own: dict[str, str] = {}
    for line in cgroups.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, group = rest.partition(":")
        if number.isdigit():
            own[controllers] = group
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 3:
            continue
        kind, options, mount_point, root = after[0], after[2].split(","), _unescape(fields[4]), _unescape(fields[3])
        path: str | None
        if kind == "cgroup" and "pids" in options:
            path = next((p for c, p in own.items() if "pids" in c.split(",")), None)
        elif kind == "cgroup2" and "" in own:
            path = own[""]
        else:
            continue
        if path is None or not (path == root or path.startswith(root.rstrip("/") + "/")):
            continue
        parent = Path(mount_point, path[len(root):].lstrip("/"))
        if kind == "cgroup2" and not _gives_pids(parent):
            continue
        return parent
    return None


def _gives_pids(parent: Path) -> bool:
    """Whether cgroup v2's pids controller is given to `parent`'s children (or can be: the root cgroup's)."""
    try:
        if "pids" in (parent / "cgroup.subtree_control").read_text().split():
            return True
        if "pids" not in (parent / "cgroup.controllers").read_text().split():
            return False
        (parent / "cgroup.subtree_control").write_text("+pids")  # refused (EBUSY) where processes live in parent
        return True
    except OSError:
        return False


#: The group below a jail's, which its processes are in.
INNER = "jail"


def cap(pid: int, most: int, name: str) -> Path | None:
    """Put process `pid` (which has not forked yet) under a new pids cgroup `PREFIX + name` that allows `most` tasks
    at once, processes and threads, its own children included: the cgroup's directory, or None when no pids cgroup
    can be made here (no pids controller, or /sys/fs/cgroup read-only, as in many containers).

    The process is in a group below it (`INNER`), not in the capped one: root in the jail is uid 0 to these files, and
    in a cgroup namespace of its own may mount the hierarchy with the group it is in as the mount's root, and write
    that group's pids.max. The capped group is above what it can mount, and the kernel holds the group below to it."""
    try:
        parent = _pids_parent(_MOUNTINFO.read_text(), _CGROUPS.read_text())
    except OSError:
        return None
    if parent is None:
        return None
    _sweep(parent)
    group = parent / f"{PREFIX}{name}"
    try:
        group.mkdir(mode=0o755)
    except OSError:
        return None
    try:
        (group / "pids.max").write_text(str(most))
        (group / INNER).mkdir(mode=0o755)
        (group / INNER / "cgroup.procs").write_text(str(pid))
    except OSError:
        release(group)
        return None
    return group


def release(group: Path) -> None:
    """Remove a jail's cgroup and every group below it, once every process in them has ended (the kernel refuses a
    group with processes): root in the jail can make groups under its own, which would keep the jail's from going."""
    with contextlib.suppress(OSError):
        for below, _, _ in os.walk(group, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(below)


def _sweep(parent: Path) -> None:
    """Remove the cgroups of jails that ended without removing theirs (their goex-proxy was killed): only empty ones
    can go."""
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if entry.name.startswith(PREFIX) and entry.is_dir(follow_symlinks=False) \
                    and now - entry.stat(follow_symlinks=False).st_mtime > _SWEEP_AFTER_S:
                release(Path(entry.path))
