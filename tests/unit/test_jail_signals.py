"""The jail's init passing a signal on to its command, also in the moment before the command has a group."""

from __future__ import annotations

import os
import signal

from goex_proxy.sandbox import jailinit


def test_a_signal_for_a_command_that_has_no_group_yet_reaches_it() -> None:
    """The init forks the command, which makes its process group with `setsid`; a signal held while the jail started
    is passed on at once, often before that: sent to the group alone, it found none and was lost."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # as the init's child: the forwarded signals blocked until its default actions are back
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
            os.write(ready_w, b"r")
            os.read(go_r, 1)
            os.setsid()
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        finally:
            os._exit(0)
    os.read(ready_r, 1)
    jailinit._signal_group(pid, signal.SIGUSR1)
    os.write(go_w, b"g")
    _, status = os.waitpid(pid, 0)
    for fd in (ready_r, ready_w, go_r, go_w):
        os.close(fd)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGUSR1, status
