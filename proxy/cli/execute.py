"""`execute`: a task done by code the configured model writes (agent.execute); here its options, the table of the
requests each run made, and undoing the ones the person picks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..config import load_config
from ..errors import GoexError
from ..sandbox import agentenv
from .common import config_option, console, duration_option, handle_errors, outcome_of, print_table
from .undo import undo_rows


@click.command()
@config_option
@click.argument("task")
@click.option("--agent", required=True, help="The agent the code runs as (its policy bounds what the code may do).")
@click.option("--yes", is_flag=True, help="Run the code without asking.")
@click.option("--show-only", is_flag=True, help="Show the code and stop; never run it.")
@click.option("--retry", "retries", type=click.IntRange(0, 10), default=0, show_default=True,
              help="When calls are denied or the program fails, let the model revise it up to N times.")
@duration_option("--timeout", "5m", "Time limit for each run of the code (30s, 5m; a plain number is seconds).")
@click.option("--then", "then", type=click.Choice(["ask", "keep", "undo"]), default="ask", show_default=True,
              help="Afterwards: ask whether to keep or undo what the code did, or keep it, or undo all of it.")
@click.option("--workspace", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The directory the code may change (default: the current directory); its changes are held until "
                   "you keep them.")
@handle_errors
def execute(config_path: Path | None, task: str, agent: str, yes: bool, show_only: bool, retries: int, timeout: float,
            then: str, workspace: Path | None) -> None:
    """Have the configured model write Python code for TASK, show it, run it jailed through the proxy as AGENT,
    show the requests it made, and keep or undo them. Everything is recorded (prompts, code, requests, choice).

    Example: goex-proxy execute "send a funny joke to #random on slack" --agent slackbot
    """
    from ..agent.execute import Options
    from ..agent.execute import execute as run_task
    from ..agent.llm import configured
    from ..policy.load import load_policy_set

    config = load_config(config_path)
    configured(config)  # no model: said before anything else
    agentenv.proxy_url(config, agent)
    if not (yes or show_only) and not sys.stdin.isatty():  # before the model is asked (a call costs money)
        raise GoexError("execute asks before it runs code: pass --yes to run it without a terminal, or --show-only")
    policies = load_policy_set(config.policy_sources)
    options = Options(agent, yes, show_only, retries, timeout, then, workspace)
    sys.exit(run_task(config, policies, task, options, console(), _show_rows,
                      lambda rows: undo_rows(config, rows), lambda hold_id, action: _settle(config, hold_id, action)))


def _settle(config: Any, hold_id: str, action: str) -> None:
    """A held database transaction the code used, committed (kept) or rolled back (undone)."""
    from .db import settle

    settle(config, hold_id, action)  # says what became of it, or why it could not be done


def _show_rows(rows: list[dict[str, Any]]) -> None:
    """The requests a run made, numbered, with what undo could do for each."""
    if not rows:
        return
    cells = [(str(i), str(row["id"]), str(row["method"]), str(row["url"]), str(row["decision"]), outcome_of(row),
              row.get("undo_class") or ("-" if row["method"] in ("GET", "HEAD", "OPTIONS") else ""))
             for i, row in enumerate(rows, start=1)]
    print_table(("#", "id", "method", "url", "decision", "status", "undo"), cells, flexible=3, colour_column=4)
