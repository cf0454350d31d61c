"""Keeps goex-proxy's own processes, which hold the vault's secrets in memory, out of reach of other processes of
the same user: no core dumps, and not traceable or readable through /proc (non-dumpable)."""

from __future__ import annotations

import ctypes
import resource
import sys

PR_SET_DUMPABLE = 4


def harden_process() -> None:
    """No core file can be written for this process, nor raised back by it, and it is not dumpable. Programs it starts
    are dumpable again (exec resets that) but keep the core limit of 0."""
    if not sys.platform.startswith("linux"):
        return
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
