"""The command line's one table renderer: whole rows when piped, fitted to a terminal by its flexible columns only."""

from __future__ import annotations

import pytest

from goex_proxy.cli import tables as plaintable
from goex_proxy.cli.tables import cells_of, render

ID = "01JD3K2M5X0A1ABCDEFGHJKMNP"
ROW = (ID, "GET", "https://slack.com/api/" + "x" * 80, "allow", "allowed by rule 'read' " * 4)
HEADERS = ("id", "method", "url", "decision", "reason")


@pytest.fixture(autouse=True)
def piped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plaintable, "on_terminal", lambda: False)
    monkeypatch.setenv("COLUMNS", "40")  # a width a terminal would have: never applied to a pipe


def test_piped_rows_are_whole_and_unpadded() -> None:
    lines = render(HEADERS, [ROW, ("1", "-", "-", "deny", "")], flexible=(2, 4), title="a title").splitlines()
    assert lines[0] == "a title"
    assert lines[3].startswith(ID + "  GET     https://slack.com/api/" + "x" * 80 + "  allow")
    assert all(line == line.rstrip() for line in lines) and "…" not in "".join(lines)
    assert lines[4] == "1" + " " * (len(ID) - 1) + "  -       -" + " " * (len(ROW[2]) - 1) + "  deny"


def test_a_terminal_width_shortens_only_the_flexible_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plaintable, "on_terminal", lambda: True)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "100")
    lines = render(HEADERS, [ROW], flexible=(2, 4)).splitlines()
    assert all(cells_of(line) <= 100 for line in lines)
    assert lines[2].startswith(ID + "  GET     https://slack.com/api/") and "…" in lines[2]
    assert " allow " in lines[2] and lines[2].endswith("…")  # both long columns gave way, the short ones did not


def test_cells_are_escaped_and_measured_as_a_terminal_shows_them() -> None:
    lines = render(("name", "x"), [("日本\u202eb\x1b[2K", "|")]).splitlines()
    assert lines[2] == "日本\\u202eb\\x1b[2K  |"  # 2+2+6+1+4+3 cells wide, then the gap
    assert lines[1].startswith("─" * (4 + 6 + 1 + 4 + 3) + "  ")


def test_colour_marks_the_value_not_the_padding() -> None:
    out = render(("d", "x"), [("deny", "1"), ("pass", "2")], colour_column=0, colour=True)
    assert "\033[31mdeny\033[0m  1" in out and "\033[32mpass\033[0m  2" in out
