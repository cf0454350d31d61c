"""What every command shares: turning goex-proxy's errors into messages and exit codes, the common options, times
as a person and as JSON read them, and the one table renderer and rich console (both imported on first use)."""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..durations import moment, parse_duration
from ..errors import ConfigError, GoexError, NotFound
from . import interrupted


def console() -> Any:
    """A rich console for human output, imported on first use so that `--json` and scripts start fast."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, flexible: int | tuple[int, ...] = (),
                colour_column: int | None = None, title: str | None = None) -> None:
    """Every table of the command line, printed by the one renderer: on a terminal, fitted to its width by shortening
    the `flexible` columns; piped, each row whole on one line (ids never cut or wrapped, no trailing spaces)."""
    from .tables import render

    click.echo(render(headers, rows, flexible=flexible, colour_column=colour_column, title=title), nl=False)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn goex-proxy's own exceptions into a one-line message and an exit code, never a traceback."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            sys.exit(2)
        except NotFound as exc:
            click.echo(f"goex-proxy: {exc}", err=True)
            sys.exit(1)
        except sqlite3.DatabaseError as exc:
            click.echo(f"goex-proxy: the audit database cannot be read: {exc}", err=True)
            sys.exit(2)
        except GoexError as exc:
            click.echo(f"goex-proxy: {exc}", err=True)
            sys.exit(2)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            interrupted()
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other command-line tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(141)
        except Exception as exc:  # last resort: one line, never a traceback (GOEX_PROXY_DEBUG=1 shows it)
            if os.environ.get("GOEX_PROXY_DEBUG"):
                raise
            where = exc.__traceback__
            while where is not None and where.tb_next is not None:
                where = where.tb_next
            at = f" at {Path(where.tb_frame.f_code.co_filename).name}:{where.tb_lineno}" if where else ""
            click.echo(f"goex-proxy: internal error ({type(exc).__name__}{at}): {str(exc)[:300]}; this is a bug, "
                       "please report it (GOEX_PROXY_DEBUG=1 shows the traceback)", err=True)
            sys.exit(70)

    return run


#: What `--limit` takes: at least one row, and at most what SQLite's LIMIT holds (a larger number reached it as
#: "datatype mismatch", which read as a damaged audit database).
LIMIT = click.IntRange(1, 2**63 - 1)


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                        help="Config file (default: $GOEX_PROXY_HOME/config.yaml).")(fn)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, one object per line.")(fn)


def duration_option(name: str, default: str, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An option taking a duration (`30s`, `5m`, `1h`), read by `parse_duration` like every duration goex-proxy takes
    (a plain number still means seconds); the command gets seconds."""
    def seconds(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
        text = value.strip()
        try:
            return float(text) if text.isdigit() and int(text) > 0 else parse_duration(text)
        except ValueError as exc:
            raise click.BadParameter(f"{exc}; a plain number is seconds") from None

    return click.option(name, metavar="DURATION", default=default, show_default=True, callback=seconds, help=help)


#: What `when` shows for a recorded time that is none (an edited or damaged row: text, or past the year 9999).
NOT_A_TIME = "(not a time)"


def _moment(ts: object) -> datetime | None:
    """A recorded time (seconds since the epoch) as a UTC datetime; None when the value is no time a clock shows,
    which ended `log`, `show` and `secrets list` with a TypeError or OverflowError (`log verify` names such a row)."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return None
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def when(ts: float | None, *, year: bool = True) -> str:
    """A recorded time as a person reads it: local, to the second (without the year, for a table)."""
    if ts is None:
        return "-"
    moment = _moment(ts)
    if moment is None:
        return NOT_A_TIME
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S" if year else "%m-%d %H:%M:%S")


def iso(ts: float | None) -> str | None:
    """A recorded time for --json: ISO 8601 in UTC with its zone, to the millisecond (`ts` stays the epoch as
    recorded; None when that is no time)."""
    moment = _moment(ts)
    return None if moment is None else moment.isoformat(timespec="milliseconds")


def parse_since(text: str | None) -> float | None:
    """A `--since` value (a duration back from now, or an ISO time, local unless it names a zone) as an epoch."""
    if text is None:
        return None
    try:
        return moment(text, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def outcome_of(row: dict[str, Any]) -> str:
    """A recorded request's outcome in a word: its status, `error` (also for an answer the agent did not get whole,
    whose row keeps the upstream's status), or `pending` (it may have happened)."""
    if row["error"]:
        return "error"
    if row["status"] is not None:
        return str(row["status"])
    return "waiting" if row.get("decision") in ("hold", "delay") else "pending"
