"""A plain aligned text table for `goex-proxy log`, which must start fast (rich alone costs it ~55 ms)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

_COLOURS = {"allow": "32", "deny": "31", "report": "33", "error": "35", "pending": "33"}


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], *, flexible: int, colour_column: int | None = None,
           width: int | None = None, colour: bool | None = None) -> str:
    """Align `rows` under `headers`; column `flexible` is shortened with '…' to fit the terminal width."""
    if colour is None:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    width = width or shutil.get_terminal_size((160, 24)).columns
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    spare = width - (sum(widths) + 2 * (len(widths) - 1))
    if spare < 0:
        widths[flexible] = max(len(headers[flexible]), widths[flexible] + spare)

    def cell(text: str, i: int) -> str:
        if len(text) > widths[i]:
            text = text[: widths[i] - 1] + "…"
        padded = text.ljust(widths[i]) if i < len(widths) - 1 else text
        if colour and i == colour_column and text in _COLOURS:
            return f"\033[{_COLOURS[text]}m{padded}\033[0m"
        return padded

    lines = ["  ".join(cell(h, i) for i, h in enumerate(headers)).rstrip()]
    lines.append("  ".join("─" * w for w in widths))
    lines += ["  ".join(cell(c, i) for i, c in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"
