"""Finding the pids cgroup a jail run as root is capped in, from the kernel's own mountinfo and cgroup lines; removing it."""

from __future__ import annotations

from pathlib import Path

from goex_proxy.sandbox.pidcap import INNER, PREFIX, _pids_parent, release

V1_MOUNTS = """\
25 24 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
30 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 25 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
36 25 0:33 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_cgroup_v1_gives_this_processs_own_group_in_the_pids_hierarchy() -> None:
    assert _pids_parent(V1_MOUNTS, "8:pids:/\n4:memory:/x\n0::/\n") == Path("/sys/fs/cgroup/pids")
    assert _pids_parent(V1_MOUNTS, "8:pids:/user.slice/a b\n0::/\n") == Path("/sys/fs/cgroup/pids/user.slice/a b")


def test_a_pids_hierarchy_mounted_from_below_its_root_is_joined_at_the_mounts_root() -> None:
    """In a container, the hierarchy's root is often the container's own group, mounted at /sys/fs/cgroup/pids."""
    mounts = "33 25 0:30 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
    assert _pids_parent(mounts, "8:pids:/docker/abc\n") == Path("/sys/fs/cgroup/pids")
    assert _pids_parent(mounts, "8:pids:/docker/abc/jobs\n") == Path("/sys/fs/cgroup/pids/jobs")
    for outside in ("/elsewhere", "/docker/abcdef"):  # not under what is mounted: nothing to write to
        assert _pids_parent(mounts, f"8:pids:{outside}\n") is None


def test_cgroup_v2_only_where_the_pids_controller_is_given_to_children(tmp_path: Path) -> None:
    own = tmp_path / "user.slice"
    own.mkdir()
    mounts = f"36 25 0:33 / {tmp_path} rw,relatime - cgroup2 cgroup2 rw\n"
    (own / "cgroup.controllers").write_text("cpu memory\n")
    (own / "cgroup.subtree_control").write_text("")
    assert _pids_parent(mounts, "0::/user.slice\n") is None
    (own / "cgroup.subtree_control").write_text("memory pids\n")
    assert _pids_parent(mounts, "0::/user.slice\n") == own


def test_no_pids_controller_anywhere_is_none() -> None:
    assert _pids_parent("30 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", "4:memory:/\n") is None


def test_a_jails_group_is_removed_with_every_group_below_it(tmp_path: Path) -> None:
    """The jail runs in a group below its capped one, and may have made more below that: all go when it ends (a
    cgroup directory holds only the kernel's files, which go with it; here, empty directories stand for them)."""
    group = tmp_path / f"{PREFIX}1-2"
    (group / INNER / "made-inside" / "deeper").mkdir(parents=True)
    release(group)
    assert not group.exists()
