"""Undo of a captured SQL statement: its recorded row images (checked against the audit chain) planned into the
statements that restore them (pure), then run upstream with the real credential in one transaction that first locks
the rows and refuses, changing nothing, if any differs from what the statement left."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from ..audit import layout
from ..audit import store as audit
from ..audit.writer import AuditWriter
from ..config import Config
from ..errors import GoexError, NotFound
from .catalog import ServerError, literal, query, run
from .upstream import UpstreamError, connect

_JSON = json.dumps([["content-type", "application/json"]])
#: What the undo of each kind does to the rows, for the plan shown.
_VERBS = {"delete": "insert back", "update": "set back", "insert": "delete"}
#: The undo's own row: the kind of statement it runs.
_METHODS = {"delete": "INSERT", "update": "UPDATE", "insert": "DELETE"}


class Conflict(GoexError):
    """A row changed since the statement ran: nothing was undone."""


@dataclass(frozen=True)
class RowPlan:
    """The undo of one captured statement: the rows to restore and the statements that check and restore them."""

    request_id: str
    kind: str                      # the statement's: insert, update, delete
    schema: str
    table: str
    key: tuple[str, ...]
    rows: list[Any]                # images: DELETE before, INSERT after, UPDATE [before, after]
    statements: list[str] = field(default_factory=list)

    @property
    def quoted(self) -> str:
        return f"{_q(self.schema)}.{_q(self.table)}"

    def describe(self) -> list[str]:
        keys = [self.key_of(image) for image in self.expected_images() or self.before_images()]
        shown = ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
        return [f"lock {len(self.rows)} row(s) of {self.quoted} by ({', '.join(self.key)}) and check each is as the "
                f"statement left it", f"{_VERBS[self.kind]} {len(self.rows)} row(s): {shown}"]

    def key_of(self, image: dict[str, Any]) -> str:
        return "(" + ", ".join(json.dumps(image.get(k)) for k in self.key) + ")"

    def expected_images(self) -> list[dict[str, Any]]:
        """The rows as the statement left them (none for a DELETE: they must still be gone)."""
        if self.kind == "update":
            return [after for _, after in self.rows]
        return list(self.rows) if self.kind == "insert" else []

    def before_images(self) -> list[dict[str, Any]]:
        if self.kind == "update":
            return [before for before, _ in self.rows]
        return list(self.rows) if self.kind == "delete" else []


#: How the undo class of a statement in a held transaction that changes nothing (a read, transaction control)
#: begins: it names its hold, as a write's does (`held: undone by ...`), and has nothing to undo.
HELD_NOTHING = "held: in held transaction "


def held_nothing(hold_id: str) -> str:
    """The undo class of a statement that changes nothing in held transaction `hold_id`."""
    return f"{HELD_NOTHING}{hold_id}, changes nothing"


def changes_nothing(undo_class: str | None) -> bool:
    """Whether a statement's undo class says it has nothing to undo (none, or a held read's)."""
    return undo_class is None or undo_class.startswith(HELD_NOTHING)


def may_change_rows(row: dict[str, Any]) -> bool:
    """Whether a recorded statement may have changed rows (not a read, transaction control, or a write that changed
    none): what a session's undo plans."""
    return not changes_nothing(row.get("undo_class")) or row.get("row_images") is not None


def plan_row(row: dict[str, Any], key: bytes | None) -> RowPlan:
    """The undo of a recorded statement; GoexError (one line) when it cannot be undone: not captured, or its row does
    not match the audit chain (edited since it was written)."""
    rid = str(row["id"])
    if row.get("undo_of"):
        raise GoexError(f"cannot undo {rid}: it is itself the undo of {row['undo_of']}")
    if row.get("decision") not in ("allow", "report") or row.get("error"):
        raise NotFound(f"nothing to undo for {rid}: it did not run ({row.get('error') or row.get('decision')})")
    images = row.get("row_images")
    if images is None:
        why = row.get("undo_class")
        if changes_nothing(why):
            raise NotFound(f"nothing to undo for {rid}: it changed no rows")
        raise GoexError(f"cannot undo {rid}: {why}")
    if row.get("outcome_hash") is None or audit.edited(key, row) is not None:
        raise GoexError(f"cannot undo {rid}: its row in the audit log does not match its hash (it was edited); "
                        "`goex-proxy log verify` says more")
    data = json.loads(images)
    out = RowPlan(rid, data["kind"], data["schema"], data["table"], tuple(data["key"]), data["rows"])
    out.statements.extend(_statements(out))
    return out


def _record(alias: str, plan: RowPlan) -> str:
    return f"pg_catalog.jsonb_populate_record(NULL::{plan.quoted}, {alias}.img)"


def _images(images: list[dict[str, Any]]) -> str:
    return f"{literal(json.dumps(images, ensure_ascii=False))}::jsonb"


def _match(plan: RowPlan) -> str:
    return " AND ".join(f"t.{_q(k)} = r.{_q(k)}" for k in plan.key)


def check_statement(plan: RowPlan) -> str:
    """Lock the rows the statement touched, by key, and give each as it is now and whether it is as expected."""
    images = plan.expected_images() or plan.before_images()
    return (f"SELECT x.i, pg_catalog.to_jsonb(t.*)::text, pg_catalog.to_jsonb(t.*) = x.img "
            f"FROM pg_catalog.jsonb_array_elements({_images(images)}) WITH ORDINALITY AS x(img, i) "
            f"CROSS JOIN LATERAL {_record('x', plan)} AS r JOIN {plan.quoted} AS t ON {_match(plan)} FOR UPDATE OF t")


def _statements(plan: RowPlan) -> list[str]:
    """The statement that restores the rows (after `check_statement` found them as the statement left them)."""
    source = (f"pg_catalog.jsonb_array_elements({_images(plan.before_images() or plan.expected_images())}) AS x(img) "
              f"CROSS JOIN LATERAL {_record('x', plan)} AS r")
    if plan.kind == "delete":  # identity columns GENERATED ALWAYS take their old values back too
        return [f"INSERT INTO {plan.quoted} OVERRIDING SYSTEM VALUE SELECT r.* FROM {source}"]
    if plan.kind == "insert":
        return [f"DELETE FROM {plan.quoted} AS t USING {source} WHERE {_match(plan)}"]
    changed = sorted({c for before, after in plan.rows for c in set(before) | set(after)
                      if before.get(c) != after.get(c)} - set(plan.key))
    if not changed:
        return []
    sets = ", ".join(f"{_q(c)} = r.{_q(c)}" for c in changed)
    return [f"UPDATE {plan.quoted} AS t SET {sets} FROM {source} WHERE {_match(plan)}"]


def conflicts(plan: RowPlan, found: list[list[str | None]]) -> list[str]:
    """What differs between the rows as they are now (the check's answer) and as the statement left them."""
    now = {int(i or 0): (text, same == "t") for i, text, same in found}
    if plan.kind == "delete":
        return [f"a row with key {plan.key_of(plan.rows[i - 1])} exists again: {text}" for i, (text, _) in now.items()]
    out = []
    for i, expected in enumerate(plan.expected_images(), start=1):
        if i not in now:
            out.append(f"the row with key {plan.key_of(expected)} is gone")
        elif not now[i][1]:
            current = json.loads(now[i][0] or "{}")
            changed = sorted(c for c in set(current) | set(expected) if current.get(c) != expected.get(c))
            out.append(f"the row with key {plan.key_of(expected)} changed since: "
                       + ", ".join(f"{c} {json.dumps(expected.get(c))} -> {json.dumps(current.get(c))}"
                                   for c in changed))
    return out


async def _run(config: Config, plan: RowPlan, row: dict[str, Any]) -> list[str]:
    """Check and restore in one transaction; the restoring statements' command tags. Conflict if any row differs."""
    from ..credentials.vault import Vault

    host = str(row["host"])
    database = config.databases.by_name.get(host)
    if database is None:
        raise GoexError(f"cannot undo {plan.request_id}: no database named {host!r} in the config now")
    if (database.port, f"/{database.dbname}") != (row.get("port"), row.get("path")):
        # The entry was edited since (its dbname or port; its server is not recorded): its rows are not this one's.
        raise GoexError(f"cannot undo {plan.request_id}: {host!r} now names another database than the statement "
                        f"ran in ({database.dbname} on port {database.port}, not {str(row.get('path'))[1:]} on "
                        f"port {row.get('port')}); nothing changed")
    password = database.password.reveal(Vault(config.state_dir).all())
    if password is None:
        raise GoexError(f"cannot undo {plan.request_id}: database {host!r} has no password "
                        f"({database.password.describe()} is not set)")
    try:
        upstream = await connect(database, password, {"client_encoding": "UTF8", "standard_conforming_strings": "on",
                                                      "application_name": "goex-proxy undo"})
    except UpstreamError as exc:
        raise GoexError(f"cannot undo {plan.request_id}: {exc}") from None
    try:
        await query(upstream, "BEGIN ISOLATION LEVEL READ COMMITTED")
        try:
            found = await query(upstream, check_statement(plan))
            problems = conflicts(plan, found)
            if problems:
                raise Conflict(f"conflict: {plan.request_id} not undone, nothing changed: " + "; ".join(problems))
            tags = []
            for sql in plan.statements:
                tags.append((await run(upstream, sql))[1])
            expected = len(plan.rows)
            if any(not tag.endswith(f" {expected}") for tag in tags):
                raise Conflict(f"conflict: {plan.request_id} not undone, nothing changed: the restore touched "
                               f"{', '.join(tags)} where {expected} row(s) were expected")
            await query(upstream, "COMMIT")
            return tags
        except BaseException:
            await query(upstream, "ROLLBACK")
            raise
    except ServerError as exc:
        raise GoexError(f"cannot undo {plan.request_id}: the server refused: {exc}; nothing changed") from None
    finally:
        upstream.writer.close()


def already_undone(conn: sqlite3.Connection, request_id: str) -> str | None:
    """The undo that already took this statement back, if one did."""
    found = conn.execute("SELECT id FROM requests WHERE undo_of = ? AND status = 0 LIMIT 1", (request_id,)).fetchone()
    return None if found is None else str(layout.id_read(found[0]))


def plan_undo(config: Config, conn: sqlite3.Connection, row: dict[str, Any]) -> RowPlan:
    """A recorded statement's undo plan, as `undo ID` and the console show it; NotFound or GoexError (one line) why
    there is none: not captured, edited since, or already undone."""
    from ..audit.seal import Seal

    the_plan = plan_row(row, audit.chain_key(conn, Seal(config.state_dir)))
    done = already_undone(conn, the_plan.request_id)
    if done is not None:
        raise NotFound(f"nothing to undo for {the_plan.request_id}: already undone (by {done})")
    return the_plan


def carry_out(config: Config, row: dict[str, Any], plan: RowPlan) -> list[str]:
    """Undo the statement upstream, recorded in the audit log as its undo (`undo_of`) before it is sent and with how
    it ended after; the command tags. Conflict or GoexError (nothing changed) if not."""
    from ..audit.seal import Seal
    from ..ids import RequestIds

    writer = AuditWriter(config.audit_db, Seal(config.state_dir))
    try:
        body = json.dumps({"undo": plan.describe()}).encode()
        undo_id = RequestIds().new()
        started = time.time()
        writer.record_intent({
            "id": undo_id, "ts": started, "agent": row["agent"], "client": "goex-proxy undo",
            "method": _METHODS[plan.kind], "scheme": "postgresql", "host": row["host"], "port": row["port"],
            "path": row["path"], "url": row["url"], "http_version": "pgwire/3", "req_headers": _JSON,
            "req_body": body, "req_body_size": len(body), "req_body_sha256": hashlib.sha256(body).hexdigest(),
            "decision": "allow", "rule": None, "reason": f"undo of {plan.request_id}", "report": None,
            "undo_of": plan.request_id}).result()
        try:
            tags = asyncio.run(_run(config, plan, row))
        except GoexError as exc:
            now = time.time()
            writer.record_outcome(undo_id, {"status": None, "error": str(exc), "ended": now,
                                            "duration_ms": round((now - started) * 1000, 3)}).result()
            raise
        now = time.time()
        data = json.dumps({"tags": tags}).encode()
        writer.record_outcome(undo_id, {"status": 0, "error": None, "ended": now,
                                        "duration_ms": round((now - started) * 1000, 3),
                                        "resp_headers": _JSON, "resp_body": data,
                                        "resp_body_size": len(data),
                                        "resp_body_sha256": hashlib.sha256(data).hexdigest()}).result()
        return tags
    finally:
        writer.close()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
