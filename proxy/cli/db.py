"""`db list`, `db commit` and `db rollback`: a person's side of the transactions the database gateway holds open for
agents (`transaction: hold`). The gateway process holds each connection; these commands ask it through the audit
database and wait for its answer."""

from __future__ import annotations

import getpass
import json
import sys
import time
from pathlib import Path

import click

from ..audit import store as audit
from ..config import Config, load_config
from ..db import holdstore
from ..printable import shown
from .common import config_option, handle_errors, iso, json_option, print_table

#: Seconds `db commit` and `db rollback` wait for the gateway to carry the decision out.
WAIT_SECONDS = 60.0


def _who() -> str:
    try:
        return f"{getpass.getuser()} (command line)"
    except (KeyError, OSError):
        return "command line"


@click.group()
def db() -> None:
    """Held database transactions (`transaction: hold`): list them, commit or roll them back."""


@db.command("list")
@config_option
@json_option
@click.option("--all", "everything", is_flag=True, help="Include those already committed or rolled back.")
@handle_errors
def list_(config_path: Path | None, as_json: bool, everything: bool) -> None:
    """List the transactions the database gateway holds open for agents.

    Example: goex-proxy db list
    """
    config = load_config(config_path)
    entries = holdstore.listing(audit.connect(config), config.audit_db, everything)
    if as_json:
        for e in entries:
            click.echo(json.dumps({"id": e["id"], "database": e["database"], "agent": e["agent"],
                                   "started": iso(e["started"] or e["created"]), "statements": e["statements"],
                                   "state": e["state"], "live": e["live"], "decided_by": e["decided_by"],
                                   "result": e["result"]}))
        return
    if not entries:
        click.echo("no transaction is held" if not everything else "no transaction has been held")
        return
    rows = [(str(e["id"]), shown(e["database"]), shown(e["agent"]), iso(e["started"] or e["created"]) or "-",
             str(e["statements"] or 0),
             str(e["state"]) if e["state"] != holdstore.OPEN or e["live"] else "open (its goex-proxy stopped)",
             shown(e["result"] or "-")) for e in entries]
    print_table(("id", "database", "agent", "started", "statements", "state", "result"), rows, flexible=6)
    if not everything:
        click.echo("keep one with `goex-proxy db commit ID`, undo it with `goex-proxy db rollback ID`")


def settle(config: Config, hold_id: str, action: str) -> bool:
    """Ask the gateway holding `hold_id` to commit or roll it back, wait for it, and say what became of it; whether
    it ended as asked."""
    conn = audit.connect(config)
    try:
        try:
            holdstore.request(conn, config.audit_db, hold_id, action, _who())
        except holdstore.HoldError as exc:
            click.echo(f"goex-proxy: {exc}", err=True)
            return False
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            entry = holdstore.get(conn, hold_id)
            if entry["state"] != holdstore.OPEN:
                click.echo(f"held transaction {hold_id} {shown(entry['result'] or entry['state'])}")
                return bool(entry["state"] == holdstore.ACTIONS[action])
            time.sleep(0.2)
    finally:
        conn.close()
    click.echo(f"goex-proxy: the gateway holding {hold_id} has not answered within {WAIT_SECONDS:g}s; it will carry "
               "the decision out when it can (see `goex-proxy db list`)", err=True)
    return False


def _decide(config_path: Path | None, hold_id: str, action: str) -> None:
    sys.exit(0 if settle(load_config(config_path), hold_id.upper(), action) else 1)


@db.command()
@config_option
@click.argument("hold_id", metavar="ID")
@handle_errors
def commit(config_path: Path | None, hold_id: str) -> None:
    """Commit a held transaction: what the agent did becomes visible and lasting.

    Example: goex-proxy db commit 01JD3K2M5X0A1
    """
    _decide(config_path, hold_id, "commit")


@db.command()
@config_option
@click.argument("hold_id", metavar="ID")
@handle_errors
def rollback(config_path: Path | None, hold_id: str) -> None:
    """Roll a held transaction back: the database is left as it was before the agent's work.

    Example: goex-proxy db rollback 01JD3K2M5X0A1
    """
    _decide(config_path, hold_id, "rollback")
