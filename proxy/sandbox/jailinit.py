"""First process of a jail: a new network namespace holding only loopback, a listener handed out, then the command.

Run as `python -I jailinit.py FD PORT -- CMD...` (standard library only, so that it starts fast and in isolation).
It leaves the host's network namespace inside a user namespace of its own (so no privilege is needed, and root
gains none over the host's network),
brings loopback up, listens on 127.0.0.1:PORT, sends that listening socket over the Unix socket FD to the parent
(which bridges its connections to the proxy from outside), and becomes the command. Anything that fails is written to
FD as `error: ...` and the command is never run.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter_namespaces() -> None:
    """A user namespace mapping only our own ids, and a network namespace it owns. Even for root: its capabilities
    then reach no further than the new namespaces, so it cannot join the host's network namespace again."""
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER | CLONE_NEWNET)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def main(argv: list[str]) -> int:
    channel = socket.socket(fileno=int(argv[1]))
    port = int(argv[2])
    command = argv[4:]
    try:
        enter_namespaces()
        loopback_up()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
    except OSError as exc:
        channel.sendall(f"error: {exc.strerror or exc}".encode())
        return 125
    socket.send_fds(channel, [b"ok"], [listener.fileno()])
    listener.close()
    channel.close()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"goex-proxy: cannot run {command[0]!r}: {exc.strerror or exc}\n")
        return 127 if isinstance(exc, FileNotFoundError) else 126


if __name__ == "__main__":
    sys.exit(main(sys.argv))
