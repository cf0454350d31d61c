"""One writer process for all the workers of a `run`: the first process's writer takes each other worker's rows over
a socket pair of its own, one end handed to the writer (`SCM_RIGHTS`, over a socket pair only the two share) and the
other to the worker when it starts, so that no file or address anyone else could connect to exists. A worker's end
stands where the writer process it would have started stands (`Link`: its input, its output, kill and wait)."""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import subprocess
import time

#: What the first process sends with each worker's end of a link (one byte: `socket.send_fds` needs some data).
_HANDED = b"w"


def ready(fd: int, write: bool, timeout: float | None) -> bool:
    """Whether `fd` can be read (or written) within `timeout` seconds (None: however long it takes). `poll`, not
    `select`: a worker's link has the number its descriptor had in the first process, past 1023 once that serves a
    thousand connections, which `select` refuses (ValueError)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT if write else select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))


def hand_over(control: socket.socket, end: socket.socket) -> bool:
    """Send `end` to the writer process over `control`; False if it could not be (the writer is gone)."""
    try:
        socket.send_fds(control, [_HANDED], [end.fileno()])
    except OSError:
        return False
    return True


def received(control: socket.socket) -> socket.socket | None:
    """A worker's end of a link the first process handed over (None: the first process closed `control`, or sent
    something that is not one; any descriptor that came with it is closed)."""
    try:
        data, fds, _, _ = socket.recv_fds(control, 16, 4)
    except OSError:
        return None
    ends = []
    for fd in fds:
        try:
            ends.append(socket.socket(fileno=fd))
        except OSError:  # not a socket
            os.close(fd)
    if data != _HANDED or len(fds) != 1 or len(ends) != 1 or ends[0].family != socket.AF_UNIX:
        for end in ends:
            end.close()
        return None
    return ends[0]


class _End:
    """One direction of a link, as a pipe to a process has it."""

    def __init__(self, link: Link) -> None:
        self._link = link

    def fileno(self) -> int:
        return self._link.sock.fileno()

    def close(self) -> None:
        """The writing end: nothing more will be sent (the writer ends this worker's rows in flight, then the link)."""
        with contextlib.suppress(OSError):
            self._link.sock.shutdown(socket.SHUT_WR)

    def read(self) -> bytes:
        """The reading end: what the writer sent up to the end of the link (once `wait` saw it end)."""
        return self._link.take()


class Link:
    """A worker's end of its link to the shared writer process, standing where a writer process of its own would
    (`OffloadedWriter` uses its `stdin`, `stdout`, `kill` and `wait`): killing it lets go of the link only (the
    writer is the first process's to kill), and waiting for it waits for the writer to close its end."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.stdin = _End(self)
        self.stdout = _End(self)
        self._tail = bytearray()  # what `wait` read while it waited for the end
        self._ended = False

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._ended = True

    def wait(self, timeout: float | None = None) -> int:
        """Until the writer closes its end (subprocess.TimeoutExpired past `timeout` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("the shared audit writer", timeout or 0.0)
            if not ready(self.sock.fileno(), False, left):
                continue
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self._ended = True
            self._tail += chunk
        return 0

    def take(self) -> bytes:
        data, self._tail = bytes(self._tail), bytearray()
        self.sock.close()
        return data
