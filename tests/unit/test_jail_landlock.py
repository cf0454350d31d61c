"""The jail's Landlock ruleset (`jailinit.confine_writes`) where the kernel has none, an old one, or one that fails."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

import pytest

from goex_proxy.sandbox import jailinit

pytestmark = pytest.mark.skipif(os.uname().machine not in jailinit.SYSCALLS, reason="the jail runs on x86_64 and aarch64")


def refuse(call: str, err: int) -> None:
    """A seccomp filter on this process: `call` fails with `err`, as on a kernel without it (ENOSYS) or under a
    container's filter (EPERM); every other call is let through."""
    machine = os.uname().machine
    program = [(jailinit.BPF_LD_W_ABS, 0, 0, 0), (jailinit.BPF_JEQ_K, 0, 1, jailinit.SYSCALLS[machine][call]),
               (jailinit.BPF_RET_K, 0, 0, jailinit.SECCOMP_RET_ERRNO | err),
               (jailinit.BPF_RET_K, 0, 0, jailinit.SECCOMP_RET_ALLOW)]
    filters = (jailinit.SockFilter * len(program))(*(jailinit.SockFilter(*op) for op in program))
    fprog = jailinit.SockFprog(len(program), filters)
    jailinit._check(jailinit.libc.prctl(jailinit.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    jailinit._check(jailinit.libc.prctl(jailinit.PR_SET_SECCOMP, jailinit.SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0,
                                        0), "seccomp")


def in_a_child(steps: Callable[[], str]) -> str:
    """What `steps` returned (or the SetupError it raised), run in a forked child: Landlock and seccomp, once applied,
    hold for the rest of a process's life."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            try:
                said = steps()
            except jailinit.SetupError as exc:
                said = f"SetupError: {exc}"
            os.write(write_end, said.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    return said


def landlock_abi() -> int:
    return int(jailinit._syscall("landlock_create_ruleset", None, 0, jailinit.LANDLOCK_CREATE_RULESET_VERSION))


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_kernel_without_landlock_runs_the_command_unconfined(tmp_path, err):
    """No Landlock (before 5.13: ENOSYS; built but off: EOPNOTSUPP): the jail runs as it did before Landlock."""
    def steps() -> str:
        refuse("landlock_create_ruleset", err)
        return f"{jailinit.confine_writes(str(tmp_path))} {open('/dev/null', 'w') and 'writes'}"

    assert in_a_child(steps) == "False writes"


@pytest.mark.parametrize("call", ["landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"])
def test_landlock_that_fails_refuses_the_command(tmp_path, call):
    """A kernel with Landlock where a step of it fails (a filter of the container's, say): a SetupError, which the
    jail's init turns into not running the command, never a command that runs unconfined."""
    if landlock_abi() < jailinit.LANDLOCK_LEAST_ABI:
        pytest.skip("this kernel's Landlock is too old for the jail to use")
    said = in_a_child(lambda: (refuse(call, errno.EPERM), str(jailinit.confine_writes(str(tmp_path))))[1])
    assert said.startswith("SetupError: ") and "Operation not permitted" in said, said


def test_landlock_of_the_first_abi_is_not_used(tmp_path, monkeypatch):
    """Landlock's first ABI (Linux 5.13 to 5.18) refuses every move of a file to another directory and cannot be told
    otherwise: under it `git mv` and `os.rename` between directories failed in the workspace. The jail runs there as
    it does without Landlock."""
    calls: list[str] = []

    def syscall(name: str, *args: object) -> int:
        calls.append(name)
        return 1 if name == "landlock_create_ruleset" else 0

    monkeypatch.setattr(jailinit, "_syscall", syscall)
    assert jailinit.confine_writes(str(tmp_path)) is False
    assert calls == ["landlock_create_ruleset"]  # the version asked for, no ruleset made
