"""Keeps goex-proxy's own processes, which hold the vault's secrets in memory, out of reach of other processes of
the same user (no core dumps; not traceable or readable through /proc), and gives them the open files a proxy needs."""

from __future__ import annotations

import ctypes
import resource
import sys

PR_SET_DUMPABLE = 4


def raise_open_files() -> None:
    """The soft limit on open files up to the hard one: a proxy holds two sockets per connection, and 1,024 (the usual
    soft limit) was exhausted by one agent's 1,100 idle connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def harden_process() -> None:
    """No core file can be written for this process, nor raised back by it, and it is not dumpable. Programs it starts
    are dumpable again (exec resets that) but keep the core limit of 0."""
    if not sys.platform.startswith("linux"):
        return
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    raise_open_files()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
