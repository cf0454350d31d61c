"""`log` (the recorded requests; `log verify` and `log anchor` for the audit chain) and `show` (one exchange in
full, every recorded value escaped so that it cannot drive the terminal)."""

from __future__ import annotations

import json
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import click

from ..audit import store as audit
from ..configfile import load_audit_settings
from ..errors import AuditError
from .common import LIMIT, config_option, console, handle_errors, iso, json_option, outcome_of, parse_since, print_table, when


@click.group(invoke_without_command=True)
@config_option
@click.option("--agent", help="Only this agent.")
@click.option("--host", help="Only this host.")
@click.option("--since", help="Only since then: a duration (30m, 1h, 7d) or an ISO time.")
@click.option("--decision", type=click.Choice(["allow", "deny", "report", "error", "challenge", "hold", "delay"]),
              help="Only this decision.")
@click.option("--limit", default=50, show_default=True, type=LIMIT,
              help="At most this many rows (newest).")
@json_option
@click.pass_context
@handle_errors
def log(click_ctx: click.Context, config_path: Path | None, agent: str | None, host: str | None, since: str | None,
        decision: str | None, limit: int, as_json: bool) -> None:
    """List recorded requests, oldest to newest; `pending` means it may have happened (no outcome was recorded).

    Example: goex-proxy log --agent mailbot --since 1h
    """
    if click_ctx.invoked_subcommand is not None:
        click_ctx.obj = config_path
        return
    db = audit.connect(load_audit_settings(config_path), readonly=True)
    rows = audit.query(db, agent=agent, host=host, since=parse_since(since), decision=decision, limit=limit)[::-1]
    if as_json:
        for row in rows:
            click.echo(json.dumps({**row, "time": iso(row["ts"])}, default=_as_text))
        return
    headers = ("id", "time", "agent", "decision", "status", "method", "url", "rule", "undo")
    cells = [(row["id"], when(row["ts"], year=False), row["agent"] or "-", row["decision"] or "-", outcome_of(row),
              row["method"] or "-", row["url"] or "-", row["rule"] or "-",
              f"undoes {row['undo_of']}" if row.get("undo_of") else row.get("undo_class") or "-") for row in rows]
    print_table(headers, cells, flexible=(6, 7), colour_column=3)


def _as_text(value: object) -> str:
    """A value JSON has no form for: bytes (a column of the row layout edited to a blob), as `show --json` gives them."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@log.command()
@config_option
@click.option("--anchor", "anchor_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check against an anchor saved earlier with `goex-proxy log anchor`.")
@click.pass_obj
@handle_errors
def verify(group_config: Path | None, config_path: Path | None, anchor_file: Path | None) -> None:
    """Check the audit log's keyed hash chain and name the first broken row.

    The newest row is also checked against the anchor kept in the state directory (and against --anchor), so rows
    removed from the end are caught as well as edited, removed or reordered ones.

    Example: goex-proxy log verify --anchor ~/goex-anchor.json
    """
    from ..audit import parallel
    from ..audit.seal import Seal, anchor_in

    config = load_audit_settings(config_path or group_config)
    seal = Seal(config.state_dir)
    conn = audit.connect(config, readonly=True)
    key = audit.chain_key(conn, seal)
    anchors = [("the state directory's anchor", seal.anchor())]
    if anchor_file is not None:
        try:
            data = anchor_file.read_bytes()
        except OSError as exc:
            raise AuditError(f"cannot read the anchor {anchor_file}: {exc.strerror or exc}") from None
        anchors.append((f"the anchor in {anchor_file}", anchor_in(data, str(anchor_file))))  # or a copy of the seal's
    rows = audit.row_count(conn)
    result: audit.VerifyResult | None = None
    for what, anchor in anchors:
        if anchor is None and key is not None and rows:
            click.echo(f"BROKEN: {what} ({seal.anchor_path}) is missing, so rows removed from the end of the log "
                       "could not be told apart; it is written with every row and only goex-proxy writes there")
            sys.exit(1)
        if result is None:
            result = parallel.verify(conn, key, anchor, parallel.processes_for(rows))  # one per core, if large
        elif anchor is not None:  # the chain holds: the other anchor's row is all there is to look at
            result = audit.against_anchor(conn, result, anchor)
        if result.broken_id is not None:
            click.echo(f"BROKEN at row {result.broken_id} (seq {result.broken_seq}): {result.problem}; "
                       f"{result.checked} rows before it are intact (checked against {what})")
            sys.exit(1)
    how = "keyed hash chain intact" if key is not None else (
        "hash chain intact, but not keyed: an older version wrote it; `goex-proxy run` keys it on start")
    checked = [what for what, anchor in anchors if anchor is not None]
    assert result is not None
    pruned = f" ({result.pruned} older rows pruned, each run joined by a signed gap record)" if result.pruned else ""
    click.echo(f"ok: {result.checked} rows{pruned}, {how}"
               + (f"; newest rows match {' and '.join(checked)}" if checked else ""))


@log.command()
@config_option
@click.option("--older-than", "older_than", metavar="DURATION",
              help="Remove rows whose requests began longer ago than this (e.g. 90d); default: audit.retention.")
@click.option("--include-undoable", is_flag=True,
              help="Also remove rows undo could still take back (kept by default until they are undone).")
@click.option("--vacuum", is_flag=True, help="Then give the freed space back to the file system (VACUUM: the "
                                              "database is locked meanwhile, so run it while goex-proxy is stopped).")
@click.pass_obj
@handle_errors
def prune(group_config: Path | None, config_path: Path | None, older_than: str | None, include_undoable: bool,
          vacuum: bool) -> None:
    """Remove old rows from the audit log, keeping what is still needed.

    Rows of requests that began before the cutoff go, with their limit hits, approvals and undo journal. Kept: rows
    undo could still take back (until undone, unless --include-undoable), rows that count against a limit whose
    window has not passed, requests still waiting or in flight, and the newest row. Each run of removed rows leaves
    a gap record signed under the chain key, so `goex-proxy log verify` still holds. `goex-proxy run` prunes by
    audit.retention on its own (at start and every 6 hours). Safe while `run` writes: one short transaction per
    batch of rows.

    Example: goex-proxy log prune --older-than 90d
    """
    from ..audit.prune import prune as prune_log
    from ..audit.seal import Seal
    from ..config import load_config
    from ..durations import format_duration, parse_duration
    from ..policy.load import load_policy_set

    config = load_config(config_path or group_config)
    if older_than is None and config.retention is None:
        raise click.UsageError("say how old: --older-than DURATION, or set audit.retention in the config")
    try:
        age = parse_duration(older_than) if older_than is not None else float(config.retention or 0)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    seal = Seal(config.state_dir)
    conn = audit.connect(config)
    windows = load_policy_set(config.policy_sources).limit_windows()
    done = prune_log(conn, audit.chain_key(conn, seal), time.time() - age, windows, seal.anchor(),
                     include_undoable=include_undoable)
    kept = ", ".join(f"{n} {why}" for why, n in sorted(done.kept.items()))
    click.echo(f"pruned {done.rows} rows older than {format_duration(age)}" + (f"; kept older rows: {kept}" if kept
                                                                                else ""))
    if vacuum:
        conn.execute("VACUUM")
        click.echo("vacuumed: the freed space is back with the file system")


@log.command()
@config_option
@click.pass_obj
@handle_errors
def anchor(group_config: Path | None, config_path: Path | None) -> None:
    """Print the newest row of the audit chain as an anchor to keep elsewhere (a file, a ticket, a chat message).

    `goex-proxy log verify --anchor FILE` later proves that nothing up to that row was removed or rewritten.

    Example: goex-proxy log anchor > ~/goex-anchor.json
    """
    with closing(audit.connect(load_audit_settings(config_path or group_config), readonly=True)) as conn:
        newest = audit.newest(conn)
    if newest is None:
        raise AuditError("the audit log has no rows yet, so there is nothing to anchor")
    click.echo(newest.dumps(), nl=False)


def _pretty_body(body: bytes | None, size: int | None, headers: list[list[str]], highlight: bool) -> Any:
    """A recorded body for `show`: JSON indented (and highlighted when `highlight`, on a terminal: rich pads highlighted
    lines to the console's width, which a pipe must not get), text as it is, binary data by its size."""
    if not body:
        return "(empty)" if not size else f"({size} bytes, not stored)"
    note = f"\n… ({size} bytes in all; the first {len(body)} stored)" if size and size > len(body) else ""
    from rich.syntax import Syntax

    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(body)} bytes of binary data){note}"
    if "json" in content_type or text.lstrip()[:1] in "{[":
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            if highlight:
                return Syntax(_seen(text) + note, "json", word_wrap=True)
        except (ValueError, RecursionError):  # not JSON, or nested past what Python parses: shown as the text it is
            pass
    from rich.text import Text

    return Text(_seen(text) + note)  # not markup: recorded bytes must not restyle what a person reads


def _seen(value: object) -> str:
    """A recorded value as a person may safely read it in a terminal: control, invisible and bidirectional
    characters written as escapes (line breaks kept), so that it cannot move the cursor or reorder what is shown."""
    from ..printable import shown

    return "\n".join(shown(line) for line in str(value).split("\n"))


def _plain(value: object) -> str:
    """`_seen`, with rich markup escaped too (for a line that mixes it with goex-proxy's own styling)."""
    from rich.markup import escape

    return escape(_seen(value))


#: Audit columns holding JSON text, given by `show --json` as JSON (never a string to decode again).
_JSON_COLUMNS = ("req_headers", "resp_headers", "pre_headers", "charged")
#: What `show` reads of a row, and what each holds as goex-proxy writes it (or None).
_NUMBERS = ("duration_ms", "req_body_size", "resp_body_size", "pre_body_size")
_BODIES = ("req_body", "resp_body", "pre_body")
_HEADERS = ("req_headers", "resp_headers", "pre_headers")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _is_headers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)
                                           for p in value)


def _shape_problem(row: dict[str, Any], as_json: bool) -> str | None:
    """What of a row `show` reads is not as goex-proxy writes it (an edited or damaged log), if anything: such a value
    ended `show` with an internal error, some of the row already printed. `--json` reads only the JSON it decodes
    (the rest it gives as stored)."""
    if as_json:
        return next((f"the {f} of row {row.get('id')} is not JSON" for f in _JSON_COLUMNS
                     if isinstance(row.get(f), str) and not _is_json(row[f])), None)
    for field in _NUMBERS:
        if row.get(field) is not None and (isinstance(row[field], bool) or not isinstance(row[field], int | float)):
            return f"the {field} of row {row.get('id')} is not a number"
    for field in _BODIES:
        if row.get(field) is not None and not isinstance(row[field], bytes):
            return f"the {field} of row {row.get('id')} is not bytes"
    for field in (*_HEADERS, "charged", "approval", "row_images"):
        if row.get(field) in (None, ""):
            continue
        try:
            value = json.loads(row[field])
        except (ValueError, TypeError, RecursionError):
            return f"the {field} of row {row.get('id')} is not JSON"
        if field in _HEADERS and not _is_headers(value):
            return f"the {field} of row {row.get('id')} is not a list of [name, value] pairs"
        if field == "approval" and not isinstance(value, dict):
            return f"the approval of row {row.get('id')} is not a JSON object"
        if field == "row_images" and not (isinstance(value, dict) and isinstance(value.get("rows"), list)
                                          and all(isinstance(value.get(k), str) for k in ("schema", "table"))):
            return f"the row_images of row {row.get('id')} are not a JSON object naming its table and rows"
    return None


def _waited(row: dict[str, Any]) -> str:
    """What became of a request that waited for a person or a delay (or that it still waits)."""
    if not row.get("approval"):
        return "it waits (see `goex-proxy pending`)" if outcome_of(row) == "waiting" else "-"
    kept = json.loads(row["approval"])
    who = f" by {kept['decided_by']}" if kept.get("decided_by") else ""
    at = f" at {when(kept['decided_at'])}" if kept.get("decided_at") else ""
    why = f": {kept['reason']}" if kept.get("reason") else ""
    return f"{kept.get('kind', 'hold')}, {kept.get('state')}{who}{at}{why}"


def _captured(row: dict[str, Any]) -> str:
    """For an SQL statement whose rows were captured: how many, of which table (the images: `show --json`)."""
    if not row.get("row_images"):
        return ""
    images = json.loads(row["row_images"])
    return _plain(f"  ({len(images['rows'])} row(s) of {images['schema']}.{images['table']} captured)")


def _header_line(name: str, value: str) -> str:
    return f"  {_plain(name)}:" + (f" {_plain(value)}" if value else "")


@click.command()
@config_option
@click.argument("request_id")
@json_option
@handle_errors
def show(config_path: Path | None, request_id: str, as_json: bool) -> None:
    """Show one recorded exchange in full, bodies pretty-printed.

    Example: goex-proxy show 01JD3K2M5X0A1
    """
    conn = audit.connect(load_audit_settings(config_path), readonly=True)
    row = audit.get(conn, request_id.upper())  # ids are case-free (Crockford)
    if (problem := _shape_problem(row, as_json)) is not None:  # said before any of the row is printed
        raise AuditError(f"the audit log is damaged: {problem}; `goex-proxy log verify` checks the log")
    if as_json:
        printable: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            elif key in _JSON_COLUMNS and isinstance(value, str):
                value = json.loads(value)  # headers as [[name, value], ...] in the order sent, repeats kept
            printable[key] = value
            if key == "ts":
                printable["time"] = iso(value)
        click.echo(json.dumps(printable))
        return
    out = console()
    terminal = out.is_terminal  # piped: bodies neither highlighted nor wrapped, so no line is padded or split
    req_headers = json.loads(row["req_headers"] or "[]")
    resp_headers = json.loads(row["resp_headers"] or "[]")
    out.print(f"[bold]{_plain(row['id'])}[/]  {when(row['ts'])}  agent [bold]{_plain(row['agent'] or '-')}[/]")
    out.print(f"decision: [bold]{_plain(row['decision'])}[/]  rule: {_plain(row['rule'] or '-')}")
    out.print(f"undo: {_plain(row.get('undo_class') or '-')}" + (f"  (this request undoes {_plain(row['undo_of'])})"
                                                                 if row.get("undo_of") else "") + _captured(row))
    out.print(f"reason: {_plain(row['reason'] or '-')}")
    if row.get("approval") or row["decision"] in ("hold", "delay"):
        out.print(f"wait: {_plain(_waited(row))}")
    if row["report"]:
        out.print(f"[yellow]{_plain(row['report'])}[/]")
    out.print(f"\n[bold]{_plain(row['method'])} {_plain(row['url'])}[/]"
              + (f" {_plain(row['http_version'])}" if row["http_version"] else ""))
    for k, v in req_headers:
        out.print(_header_line(k, v))
    out.print(_pretty_body(row["req_body"], row["req_body_size"], req_headers, terminal),
              soft_wrap=not terminal)  # on a terminal, wrap, never crop
    outcome = outcome_of(row)
    if outcome == "pending":
        out.print("\n[yellow]no outcome recorded: the request may have happened[/]")
        return
    if row["error"]:
        out.print(f"\n[magenta]error: {_plain(row['error'])}[/]")
        if row["status"] is None:
            return
        out.print("the upstream's answer, as it came:")
    took = "" if row["duration_ms"] is None else f" in {row['duration_ms']:.1f} ms"  # a number (`_shape_problem`)
    out.print(f"\n[bold]{_plain(row['status'])}[/]{took}")
    for k, v in resp_headers:
        out.print(_header_line(k, v))
    out.print(_pretty_body(row["resp_body"], row["resp_body_size"], resp_headers, terminal),
              soft_wrap=not terminal)  # on a terminal, wrap, never crop
