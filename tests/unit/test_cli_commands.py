"""The command line's table of commands: each name is the command it names, and one command loads only its module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from goex_proxy.cli import COMMANDS, cli


def test_every_listed_command_resolves_to_a_command_of_that_name() -> None:
    context = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(context, name)
        assert isinstance(command, click.Command) and command.name == name
    assert cli.get_command(context, "no-such-command") is None


def test_help_lists_every_command_and_an_unknown_one_is_refused() -> None:
    shown = CliRunner().invoke(cli, ["--help"]).output
    assert all(f"  {name} " in shown for name in COMMANDS)
    refused = CliRunner().invoke(cli, ["lgo"])
    assert refused.exit_code == 2 and "No such command 'lgo'" in refused.output


def test_a_command_loads_only_its_own_module(tmp_path: Path) -> None:
    """`log` starts without what the proxy, approvals or execute load (it is run often, from scripts): not the audit
    writer and its thread pool's futures, nor RE2, which only a glob compiled on first use needs, nor the HTML
    entities that only the spellings of secrets need, nor the parsers of the config's other sections (it reads only
    `state_dir` and `audit`)."""
    config = tmp_path / "config.yaml"
    config.write_text(f"version: 1\naudit: {{db: {json.dumps(str(tmp_path / 'audit.db'))}}}\n", encoding="utf-8")
    probe = ("import json, sys\nfrom goex_proxy.cli import cli\ntry:\n    cli(['log', '--config', sys.argv[1]])\n"
             "except SystemExit:\n    pass\nprint(json.dumps(sorted(sys.modules)))")
    ran = subprocess.run([sys.executable, "-c", probe, str(config)], capture_output=True, text=True, check=True)
    assert "no audit database" in ran.stderr  # it read the config, and looked for the log where it says
    modules = json.loads(ran.stdout.splitlines()[-1])
    assert {"goex_proxy.cli.logs", "goex_proxy.configfile", "goex_proxy.audit.store"} <= set(modules)
    assert "goex_proxy.config" not in modules
    assert not [m for m in modules if m.startswith(("goex_proxy.approvalconfig",
                                                   "goex_proxy.consoleconfig", "goex_proxy.dbconfig",
                                                   "goex_proxy.credentials", "goex_proxy.net",
                                                   "goex_proxy.cli.run", "goex_proxy.cli.approvals",
                                                   "goex_proxy.cli.execute", "goex_proxy.audit.writer",
                                                   "concurrent.futures", "html", "mitmproxy", "celpy", "re2"))], modules
