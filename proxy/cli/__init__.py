"""The `goex-proxy` command line; the only place where exceptions become messages and exit codes.

One module per command group, each a thin layer over the package that owns the concern (it parses options, prints,
asks, and sets the exit code): `run` (init, run, exec, env, doctor), `logs` (log, show), `undo`, `approvals` (pending,
approve, deny, cancel, review), `policy`, `secrets` (secrets, authorize), `execute`, `files`, `console` and `db`;
`common` holds what they share, `tables` the one table renderer. This module only assembles the group. Every module imports its heavy
dependencies inside its commands, so that `--help`, `log` and scripts start fast.

Exit codes: 0 success; 1 a check found problems (policy check, log verify) or a record was not found; 2 bad usage, an
invalid config or policy, or missing state; `exec` exits with its command's code.
"""

from __future__ import annotations

import click

from .. import __version__
from . import approvals, console, db, execute, files, logs, policy, run, secrets, undo


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="goex-proxy")
def cli() -> None:
    """goex-proxy: let LLM agents use real accounts through a proxy that enforces policy and records everything."""


#: Every command and command group of `goex-proxy`.
COMMANDS = (run.init, run.run, run.exec_, run.env_, run.doctor, logs.log, logs.show, undo.undo, approvals.pending,
            approvals.approve, approvals.deny, approvals.cancel, approvals.review, policy.policy, secrets.secrets,
            secrets.authorize, execute.execute, files.files, console.console, db.db)
for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    """The `goex-proxy` entry point: the process hardened (no core file, not dumpable), then the command line."""
    from ..hardening import harden_process

    harden_process()
    cli()
