"""The one table renderer of the command line: plain aligned text, fast to import (`goex-proxy log` must start fast;
rich alone costs ~55 ms).

On a terminal the `flexible` columns are shortened with '…' so that a row fits its width, and decisions are coloured.
Anywhere else (a pipe, a file) every cell is printed whole: no row is cut, wrapped or padded at its end, so that
`grep`, `cut` and `awk` see each row on one line and every id in one piece. Cells are escaped as `show` escapes
recorded values, so that a recorded URL cannot move the cursor or reorder the text around it.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Sequence

_COLOURS = {"allow": "32", "deny": "31", "report": "33", "error": "35", "pending": "33", "pass": "32", "FAIL": "31"}
#: The narrowest a flexible column is made on a terminal (or its header's width, if wider).
MIN_FLEXIBLE = 8


def on_terminal() -> bool:
    return sys.stdout.isatty()


def cells_of(text: str) -> int:
    """How many terminal cells `text` takes: East Asian wide characters two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _clip(text: str, cells: int) -> str:
    """`text` cut to at most `cells` cells, ending in '…' if it was cut."""
    if cells_of(text) <= cells:
        return text
    out, used = [], 1
    for c in text:
        used += cells_of(c)
        if used > cells:
            break
        out.append(c)
    return "".join(out) + "…"


def _escaped(text: str) -> str:
    if text.isprintable():
        return text
    from ..printable import shown

    return shown(text)


def _fit(widths: list[int], flexible: Sequence[int], minimum: dict[int, int], excess: int) -> None:
    """Lower the widest flexible columns to a common cap, as little as takes `excess` cells off (or as far as
    their minimums allow)."""
    def saved(cap: int) -> int:
        return sum(widths[i] - max(min(widths[i], cap), minimum[i]) for i in flexible)

    low, high = 0, max(widths[i] for i in flexible)  # saved(high) == 0; find the highest cap saving enough
    while low < high:
        mid = (low + high + 1) // 2
        if saved(mid) >= excess:
            low = mid
        else:
            high = mid - 1
    for i in flexible:
        widths[i] = max(min(widths[i], low), minimum[i])


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], *, flexible: int | Sequence[int] = (),
           colour_column: int | None = None, title: str | None = None, width: int | None = None,
           colour: bool | None = None) -> str:
    """`rows` aligned under `headers`, one line each, preceded by `title` if given.

    `width` is the width to fit (default: the terminal's, or no limit when standard output is not a terminal);
    only the `flexible` columns are ever shortened to fit it. Column `colour_column` is coloured by value
    (allow, deny, pass, FAIL...) when `colour` (default: on a terminal, unless NO_COLOR is set)."""
    terminal = on_terminal()
    if colour is None:
        colour = terminal and "NO_COLOR" not in os.environ
    if width is None and terminal:
        import shutil  # here: a table written to a pipe or file (scripts) never pays for it

        width = shutil.get_terminal_size((160, 24)).columns
    flexible = [flexible] if isinstance(flexible, int) else list(flexible)
    body = [[_escaped(str(c)) for c in r] for r in rows]
    widths = [max([cells_of(h), *(cells_of(r[i]) for r in body)]) for i, h in enumerate(headers)]
    if width is not None and flexible:
        excess = sum(widths) + 2 * (len(widths) - 1) - width
        if excess > 0:
            _fit(widths, flexible, {i: min(widths[i], max(cells_of(headers[i]), MIN_FLEXIBLE)) for i in flexible},
                 excess)
    last = len(widths) - 1

    def line(cells: Sequence[str], colourful: bool) -> str:
        out = []
        for i, text in enumerate(cells):
            shortened = _clip(text, widths[i])
            pad = "" if i == last else " " * (widths[i] - cells_of(shortened))
            if colourful and i == colour_column and text in _COLOURS:
                shortened = f"\033[{_COLOURS[text]}m{shortened}\033[0m"
            out.append(shortened + pad)
        return "  ".join(out).rstrip()

    lines = [_escaped(title)] if title else []
    lines.append(line(headers, False))
    lines.append("  ".join("─" * w for w in widths))
    lines += [line(r, colour) for r in body]
    return "\n".join(lines) + "\n"
