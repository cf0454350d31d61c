"""`files`: the file changes of jailed runs listed, shown, kept or undone (sandbox.runs)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import load_config
from .common import LIMIT, config_option, handle_errors, iso, json_option, parse_since, print_table, when


@click.group()
def files() -> None:
    """Review, keep or undo the file changes of jailed runs (each run that changed files has an id)."""


@files.command(name="list")
@config_option
@click.option("--agent", help="Only this agent's runs.")
@click.option("--since", help="Only since then: a duration (30m, 1h, 7d) or an ISO time.")
@click.option("--limit", default=50, show_default=True, type=LIMIT,
              help="At most this many runs (newest).")
@json_option
@handle_errors
def files_list(config_path: Path | None, agent: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """The runs that changed files, newest first: what they changed and whether it is pending, kept or undone.

    Example: goex-proxy files list --agent mailbot --since 1h
    """
    from ..printable import shown
    from ..sandbox import runs

    found = runs.recorded(load_config(config_path), agent=agent, since=parse_since(since), limit=limit)
    if as_json:
        for r in found:
            click.echo(json.dumps({"id": r.id, "agent": r.agent, "ts": r.ts, "time": iso(r.ts), "ended": r.ended,
                                   "workspace": r.workspace, "command": r.command, "exit_code": r.exit_code,
                                   "state": r.state, **r.counts}))
        return
    cells = [(r.id, when(r.ts), r.agent, shown(r.workspace), str(r.counts["added"]), str(r.counts["changed"]),
              str(r.counts["deleted"]), r.state, shown(" ".join(r.command))) for r in found]
    print_table(("id", "when", "agent", "workspace", "added", "changed", "deleted", "state", "command"), cells,
                flexible=(3, 8))


@files.command(name="diff")
@config_option
@click.argument("run_id")
@json_option
@handle_errors
def files_diff(config_path: Path | None, run_id: str, as_json: bool) -> None:
    """What a run changed: each path added, changed or deleted (kind, mode, link, size), and a unified diff of text.

    Example: goex-proxy files diff 01JD3K2M5X0A1
    """
    from dataclasses import asdict

    from ..printable import shown
    from ..sandbox import runs
    from ..sandbox.diff import describe, unified

    config = load_config(config_path)
    run = runs.load(config, run_id)
    sides = runs.contents(config, run)
    requests = runs.requests_of(config, run)
    if as_json:
        click.echo(json.dumps({"id": run.id, "state": run.state, "agent": run.agent, "workspace": run.workspace,
                               "requests": [r["id"] for r in requests], "changes": [
            {"path": c.path, "action": c.action, "before": asdict(c.before) if c.before else None,
             "after": asdict(c.after) if c.after else None, "diff": "".join(unified(c, *sides[i]))}
            for i, c in enumerate(run.changes)]}))
        return
    click.echo(f"run {run.id} ({run.state}) by {run.agent} in {shown(run.workspace)}: {shown(' '.join(run.command))}")
    if requests:
        click.echo(f"requests it made: {' '.join(str(r['id']) for r in requests)} (`goex-proxy show ID`)")
    for i, change in enumerate(run.changes):
        click.echo(describe(change))
        for line in unified(change, *sides[i]):
            click.echo("    " + line, nl=False)


@files.command(name="keep")
@config_option
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Apply even over paths changed since the run (their contents are lost).")
@handle_errors
def files_keep(config_path: Path | None, run_id: str, force: bool) -> None:
    """Apply a run's held changes to its workspace (what each path held before is kept for `files undo`).

    Example: goex-proxy files keep 01JD3K2M5X0A1
    """
    from ..sandbox import runs

    run = runs.keep(load_config(config_path), run_id, force=force)
    click.echo(f"kept run {run.id}: {len(run.changes)} path(s) applied to {run.workspace}")


@files.command(name="undo")
@config_option
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Restore even paths changed since the run (those later changes are lost).")
@handle_errors
def files_undo(config_path: Path | None, run_id: str, force: bool) -> None:
    """Take a run's file changes back: restore the workspace byte for byte, or drop changes never applied.

    Example: goex-proxy files undo 01JD3K2M5X0A1
    """
    from ..sandbox import runs

    run = runs.undo(load_config(config_path), run_id, force=force)
    done = "restored in" if run.state == runs.UNDONE else "dropped, never applied to"
    click.echo(f"undid run {run.id}: {len(run.changes)} path(s) {done} {run.workspace}")
