"""Warnings a flood would repeat thousands of times a second: each kind at most once per interval, with a count of
those left out."""

from __future__ import annotations

import logging
import time


class QuietLog:
    """Writes one warning of each kind per `interval` seconds; the next one says how many were not written."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._kinds: dict[str, tuple[float, int]] = {}  # kind -> (when one was last written, how many left out since)

    def warning(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last, left_out = self._kinds.get(kind, (None, 0))
        if last is not None and now - last < self.interval:
            self._kinds[kind] = (last, left_out + 1)
            return
        if left_out and last is not None:
            message += f" (and {left_out:,} more like it in the {now - last:.0f}s before, not shown)"
        self.logger.warning("%s", message)
        self._kinds[kind] = (now, 0)
