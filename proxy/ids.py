"""Short ids that sort by time, for audit rows and file runs: 9 base-32 characters of milliseconds, then 4 of
sequence (Crockford's alphabet)."""

from __future__ import annotations

import secrets
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class RequestIds:
    """Short ids that sort by time: 9 base-32 characters of milliseconds, then 4 of sequence."""

    def __init__(self) -> None:
        self._last_ms = 0
        self._n = 0
        self._lock = threading.Lock()

    def new(self, now: float | None = None) -> str:
        with self._lock:
            ms = max(int((now or time.time()) * 1000), self._last_ms)
            if ms == self._last_ms:
                self._n += 1
                if self._n >= 32 ** 4:
                    ms, self._n = ms + 1, secrets.randbelow(1024)
            else:
                self._n = secrets.randbelow(1024)
            self._last_ms = ms
            return _b32(ms, 9) + _b32(self._n, 4)


def is_request_id(text: str) -> bool:
    """True for a string shaped like the ids `RequestIds` makes."""
    return len(text) == 13 and all(c in _CROCKFORD for c in text)


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 32)
        out.append(_CROCKFORD[r])
    return "".join(reversed(out))
