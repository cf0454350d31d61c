"""The `goex-proxy` command line; the only place where exceptions become messages and exit codes.

One module per command group, each a thin layer over the package that owns the concern (it parses options, prints,
asks, and sets the exit code): `run` (init, run, exec, env, doctor), `logs` (log, show), `undo`, `policy`, `secrets`
(secrets, authorize), `execute` and `files`; `common` holds what they share, `tables` the one table renderer. This
module only assembles the group. Every module imports its heavy dependencies inside its commands, so that `--help`,
`log` and scripts start fast.

Exit codes: 0 success; 1 a check found problems (policy check, log verify) or a record was not found;
2 bad usage, an invalid config or policy, or missing state; `exec` exits with its command's code.
"""

from __future__ import annotations

import click

from .. import __version__
from . import execute, files, logs, policy, run, secrets, undo


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="goex-proxy")
def cli() -> None:
    """goex-proxy: let LLM agents use real accounts through a proxy that enforces policy and records everything."""


cli.add_command(run.init)
cli.add_command(run.run)
cli.add_command(run.exec_)
cli.add_command(run.env_)
cli.add_command(run.doctor)
cli.add_command(logs.log)
cli.add_command(logs.show)
cli.add_command(undo.undo)
cli.add_command(policy.policy)
cli.add_command(secrets.secrets)
cli.add_command(secrets.authorize)
cli.add_command(execute.execute)
cli.add_command(files.files)


def main() -> None:
    """The `goex-proxy` entry point: the process hardened (no core file, not dumpable), then the command line."""
    from ..hardening import harden_process

    harden_process()
    cli()
