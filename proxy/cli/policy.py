"""`policy check` (the files' problems, from undo.policycheck) and `policy test` (what-if against the log)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..audit import store as audit
from ..config import load_config
from .common import config_option, handle_errors, iso, json_option, print_table, when


@click.group()
def policy() -> None:
    """Check policies and try them against recorded traffic."""


@policy.command()
@config_option
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@handle_errors
def check(config_path: Path | None, files: tuple[Path, ...]) -> None:
    """Print every problem in policy or undo-pack FILES (or the config, its policies and its undo packs) as
    file:line:col: message.

    Example: goex-proxy policy check policies/slack-post-only.yaml
    """
    from ..undo.policycheck import check as check_files

    targets, problems = check_files(files, config_path)
    for problem in problems:
        click.echo(str(problem))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        sys.exit(1)
    click.echo(f"ok: {len(targets)} file{'' if len(targets) == 1 else 's'} (policies and undo packs) checked, no errors")


@policy.command(name="test")
@config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--against-log", is_flag=True, required=True, help="Replay the recorded requests of the audit log.")
@json_option
@handle_errors
def test_(config_path: Path | None, files: tuple[Path, ...], against_log: bool, as_json: bool) -> None:
    """Show which recorded requests the policies would decide differently if FILES replaced the configured policies
    of the same name (or were added to them): each request the policy decided is decided again by the configured
    policies (before) and with FILES in their place (after). What refused a request besides the policy (the SSRF
    guard, credential injection, identity) is no change FILES make.

    Example: goex-proxy policy test new-slack.yaml --against-log
    """
    from ..policy import whatif

    config = load_config(config_path)
    current, candidate = whatif.policy_sets(config.policy_sources, files)
    db = audit.connect(config, readonly=True)
    seen, changes = whatif.replay(audit.iter_rows(db), current, candidate)
    if as_json:
        for c in changes:
            click.echo(json.dumps({**c.__dict__, "time": iso(c.ts)}))
        return
    if not changes:
        click.echo(f"no change: the {seen} recorded requests the policy decided would be decided the same way")
        return
    cells = [(c.id, when(c.ts), c.agent or "-", f"{c.method} {c.url}", c.before, c.after,
              f"{c.rule or '-'}: {c.reason}" + (" [body was truncated in the log]" if c.body_truncated else ""))
             for c in changes]
    print_table(("id", "time", "agent", "request", "before", "after", "rule / reason"), cells, flexible=(3, 6),
                colour_column=5, title=f"{len(changes)} of {seen} recorded requests would be decided differently "
                                       "(before: the configured policies; after: with "
                                       f"{', '.join(str(f) for f in files)})")
