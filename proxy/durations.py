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
            try:
                return float(int(m.group(1)) * _UNITS[m.group(2)])
            except OverflowError:  # past any float (over 300 digits): no duration anyone means
                pass
    raise ValueError(f"must be a duration like 30s, 5m, 1h or 7d (got {text!r})")


def format_duration(seconds: float) -> str:
    """Seconds written the way `parse_duration` reads them back, in the largest unit that divides them: 120 as `2m`."""
    whole = int(seconds)
    if whole != seconds or whole <= 0:
        return f"{seconds:g}s"
    return next(f"{whole // size}{unit}" for unit, size in sorted(_UNITS.items(), key=lambda u: -u[1])
                if whole % size == 0)


def moment(text: str, now: float) -> float:
    """A point in time as a person writes one: a duration back from `now` (`1h`, `30m`) or an ISO time (local
    unless it names a zone), as an epoch; ValueError naming what is wrong."""
    from datetime import datetime

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"must be a duration like 1h or an ISO time like 2026-11-24T10:00 (got {text!r})") from None
    return (found if found.tzinfo else found.astimezone()).timestamp()
