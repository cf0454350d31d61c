"""Durations written as `30s`, `5m`, `1h`, `7d`, parsed to seconds."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+)\s*([smhdw])")


def parse_duration(text: object) -> float:
    """Parse a duration like `1h` or `90s`; raise ValueError naming the bad value."""
    if isinstance(text, str):
        m = _DURATION.fullmatch(text.strip())
        if m and int(m.group(1)) > 0:
            return float(int(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"must be a duration like 30s, 5m, 1h or 7d (got {text!r})")
