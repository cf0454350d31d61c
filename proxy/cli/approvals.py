"""`pending`, `approve`, `deny`, `cancel` and `review`: a person's side of requests that wait, and of those that passed."""

from __future__ import annotations

import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..approvals import store as approvals
from ..audit import store as audit
from ..config import load_config
from ..durations import format_duration
from ..printable import shown
from .common import LIMIT, config_option, handle_errors, iso, json_option, print_table, when


def _who() -> str:
    try:
        return f"{getpass.getuser()} (command line)"
    except (KeyError, OSError):
        return "command line"


def _left(deadline: float | None) -> str:
    if deadline is None:
        return "-"
    seconds = deadline - time.time()
    return "due now" if seconds <= 0 else format_duration(max(1, round(seconds)))


@click.command()
@config_option
@json_option
@handle_errors
def pending(config_path: Path | None, as_json: bool) -> None:
    """List the requests waiting now: held for approval, or delayed (sent when the delay runs out unless cancelled).

    Example: goex-proxy pending
    """
    config = load_config(config_path)
    entries = approvals.pending(audit.connect(config))
    if as_json:
        for e in entries:
            card = json.loads(e["card"] or "{}")
            click.echo(json.dumps({"id": e["request_id"], "agent": e["agent"], "kind": e["kind"], "state": e["state"],
                                   "since": iso(e["ts"]), "deadline": iso(e["deadline"]),
                                   "undo_class": e["undo_class"], "why": e["why"], "live": e["live"], "card": card}))
        return
    if not entries:
        click.echo("nothing is waiting")
        return
    rows = [(e["request_id"], e["agent"] or "-", e["state"] if e["live"] else f"{e['state']} (its proxy stopped)",
             _left(e["deadline"]), e["undo_class"] or "-", json.loads(e["card"] or "{}").get("summary", "-"))
            for e in entries]
    print_table(("id", "agent", "state", "left", "undo", "what it will do"), rows, flexible=5)
    click.echo("approve with `goex-proxy approve ID`, refuse with `goex-proxy deny ID --reason TEXT`; a delayed request "
               "is sent when its time is up unless `goex-proxy cancel ID`")


def _decide(config_path: Path | None, request_id: str, action: str, reason: str | None) -> None:
    config = load_config(config_path)
    conn = audit.connect(config)
    try:
        settled = approvals.decide(conn, request_id.upper(), action, _who(), reason)
    except approvals.ApprovalError as exc:
        click.echo(f"goex-proxy: {exc}", err=True)
        sys.exit(1)
    statement = json.loads(settled.entry.get("card") or "{}").get("database") is not None  # a SQL card names it
    refused = "a PostgreSQL error (42501)" if statement else "a 403"
    what = {"approve": "approved: it is sent now", "deny": f"denied: the agent gets {refused}" + (
        f" saying {reason!r}" if reason else ""), "cancel": "cancelled: it will not be sent"}[action]
    click.echo(f"{settled.entry['request_id']} {what}")


@click.command()
@config_option
@click.argument("request_id")
@handle_errors
def approve(config_path: Path | None, request_id: str) -> None:
    """Let a held request go (or send a delayed one now). It is sent once, whoever else decides.

    Example: goex-proxy approve 01JD3K2M5X0A1
    """
    _decide(config_path, request_id, "approve", None)


@click.command()
@config_option
@click.argument("request_id")
@click.option("--reason", help="Told to the agent with its 403, and kept in the audit log.")
@handle_errors
def deny(config_path: Path | None, request_id: str, reason: str | None) -> None:
    """Refuse a waiting request: nothing is sent, and the agent gets a 403 (a PostgreSQL error for a statement) with
    the reason.

    Example: goex-proxy deny 01JD3K2M5X0A1 --reason "not this channel"
    """
    _decide(config_path, request_id, "deny", reason)


@click.command()
@config_option
@click.argument("request_id")
@handle_errors
def cancel(config_path: Path | None, request_id: str) -> None:
    """Cancel a delayed request before its delay runs out ("undo send"): it is never sent.

    Example: goex-proxy cancel 01JD3K2M5X0A1
    """
    _decide(config_path, request_id, "cancel", None)


@click.command()
@config_option
@click.option("--done", "done_ids", multiple=True, metavar="ID", help="Mark these seen (repeat, or list them after).")
@click.option("--all", "include_seen", is_flag=True, help="Include requests already marked seen.")
@click.option("--limit", default=20, show_default=True, type=LIMIT, help="At most this many (newest).")
@click.argument("more_ids", nargs=-1, metavar="[ID]...")
@json_option
@handle_errors
def review(config_path: Path | None, done_ids: tuple[str, ...], include_seen: bool, limit: int,
           more_ids: tuple[str, ...], as_json: bool) -> None:
    """List what went out without a person, newest first, each with the plan `undo` would carry out: requests that
    passed because undo can take them back (a policy's `review:`), and delayed ones whose delay ran out.

    Example: goex-proxy review, then goex-proxy review --done 01JD3K2M5X0A1 01JD3K2M5X0A2
    """
    config = load_config(config_path)
    conn = audit.connect(config)
    if done_ids or more_ids:
        if more_ids and not done_ids:
            raise click.UsageError("to mark requests seen, give them with --done (e.g. review --done ID ID)")
        wanted = [i.upper() for i in (*done_ids, *more_ids)]
        marked = approvals.mark_seen(conn, wanted, _who())
        for request_id in wanted:
            click.echo(f"{request_id} marked seen" if request_id in marked else
                       f"{request_id}: not in the review queue", err=request_id not in marked)
        if len(marked) < len(wanted):
            sys.exit(1)
        return
    entries = approvals.review_queue(conn, limit, include_seen)
    if not entries:
        if not as_json:
            click.echo("nothing to review")
        return
    _print_queue(config, conn, entries, as_json)


def _print_queue(config: Any, conn: Any, entries: list[dict[str, Any]], as_json: bool) -> None:
    """Each entry's row and undo plan, through the same planner and printer as `undo --dry-run`."""
    from ..undo import session
    from ..undo.run import Journal
    from .undo import _print_undo_plan

    rows = {str(r["id"]): r for r in (audit.get(conn, e["request_id"]) for e in entries)}
    plans = {p.request_id: p for p in session.plan_rows(config, Journal(conn), rows.values(), False)}
    for e in entries:
        request_id = e["request_id"]
        row = rows[request_id]
        seen = f" (seen {when(e['reviewed_at'], year=False)} by {e['reviewed_by']})" if e.get("reviewed_at") else ""
        if as_json:
            click.echo(json.dumps({"id": request_id, "time": iso(e["ts"]), "agent": e["agent"], "state": e["state"],
                                   "undo_class": row.get("undo_class") or e["undo_class"], "why": e["why"],
                                   "reviewed_at": iso(e.get("reviewed_at")), "method": row["method"],
                                   "url": row["url"], "status": row["status"]}))
            _print_undo_plan(plans[request_id], True)
            continue
        how = "passed (undo can take it back)" if e["kind"] == "review" else "sent when its delay ran out"
        click.echo(shown(f"{request_id}  {when(e['ts'])}  {e['agent']}  {how}{seen}"))
        _print_undo_plan(plans[request_id], False)
        click.echo("")
    if not as_json:
        click.echo("mark them seen with `goex-proxy review --done ID...`; take one back with `goex-proxy undo ID`")
