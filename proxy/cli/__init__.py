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

import gc
import importlib
import sys
from typing import NoReturn

import click

from .. import __version__

#: Every command and command group of `goex-proxy`: its name, and the module here and the attribute there that make it.
COMMANDS = {"init": ("run", "init"), "run": ("run", "run"), "exec": ("run", "exec_"), "env": ("run", "env_"),
            "doctor": ("run", "doctor"), "log": ("logs", "log"), "show": ("logs", "show"), "undo": ("undo", "undo"),
            "pending": ("approvals", "pending"), "approve": ("approvals", "approve"), "deny": ("approvals", "deny"),
            "cancel": ("approvals", "cancel"), "review": ("approvals", "review"), "policy": ("policy", "policy"),
            "secrets": ("secrets", "secrets"), "authorize": ("secrets", "authorize"),
            "execute": ("execute", "execute"), "files": ("files", "files"), "console": ("console", "console"),
            "db": ("db", "db")}


#: What a command interrupted by Ctrl-C says, with exit 130 (the shell's code for it), wherever the interrupt lands.
INTERRUPTED = "goex-proxy: interrupted"


def interrupted() -> NoReturn:
    """End the command as a Ctrl-C ends it: one line, and 130 (not click's "Aborted!" and 1)."""
    click.echo(INTERRUPTED, err=True)
    sys.exit(130)


class _Commands(click.Group):
    """The group of COMMANDS, each module imported only when one of its commands runs (help imports them all): `log`
    then starts without what `run`, `approvals` or `execute` load."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        collecting = gc.isenabled()
        gc.disable()  # as `goex_proxy.__main__` does for this module: an import makes no garbage to look for
        try:
            module = importlib.import_module(f"{__name__}.{where[0]}")
        except KeyboardInterrupt:  # click would say "Aborted!" and exit 1: the same as under a command instead
            interrupted()
        finally:
            if collecting:
                gc.enable()
        command: click.Command = getattr(module, where[1])
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="goex-proxy")
def cli() -> None:
    """goex-proxy: let LLM agents use real accounts through a proxy that enforces policy and records everything."""



def main() -> None:
    """The `goex-proxy` entry point: the process hardened (no core file, not dumpable), then the command line."""
    from ..hardening import harden_process

    harden_process()
    cli()
