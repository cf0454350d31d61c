"""Audit rows for statements, in the columns HTTP rows use: scheme `postgresql`, the database's name as host, the
statement's kind as method, the SQL and its parameters as the request body, the command tags as the response."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import time
from typing import Any

from ..dbconfig import Database
from ..policy.engine import Decision
from ..policy.sqlparse import Statement

#: `status` of a statement that completed: SQLSTATE 00000, successful_completion (errors keep their SQLSTATE in
#: `error`, and have no status).
COMPLETED = 0
#: The kinds of statement that change something (irreversible unless their rows are captured or held).
WRITE_KINDS = frozenset({"insert", "update", "delete", "ddl", "other", "set"})
_JSON = json.dumps([["content-type", "application/json"]])  # the headers of every body: built once

#: The scheme of the gateway's rows in the audit log (their url is `postgresql://DATABASE/DBNAME`).
SCHEME = "postgresql"


def method_of(statements: tuple[Statement, ...]) -> str:
    """The row's method: the statement's kind, or the kinds of a message of several joined with `+`."""
    kinds = list(dict.fromkeys(s.kind for s in statements)) or ["empty"]
    return "+".join(k.upper() for k in kinds)


def undo_class(statements: tuple[Statement, ...]) -> str | None:
    """None for reads and transaction control (nothing to undo); irreversible for anything that writes or calls code
    the policy cannot see through, unless row capture (`rowcapture`) or a held transaction says otherwise."""
    if any(s.kinds & WRITE_KINDS for s in statements):
        return "irreversible: its rows are not captured for undo"
    return calls_code(statements)


def calls_code(statements: tuple[Statement, ...]) -> str | None:
    """Why a message is irreversible whatever it looks like, when it calls functions beyond the built-in pure ones
    (a rule's `functions:` let them through): a SELECT of set_config, nextval or a function of the database's own may
    change anything, which no capture sees; None when it calls none."""
    called = list(dict.fromkeys(f for s in statements for f in s.unseen_functions()))
    if not called:
        return None
    return f"irreversible: it calls {', '.join(called)}, which may change what undo cannot see"


#: Binary parameter formats read back as values, by type OID: bool, int8, int2, int4, float4, float8.
_BINARY = {16: "?", 20: "!q", 21: "!h", 23: "!i", 700: "!f", 701: "!d"}
_TEXT_TYPES = {18, 19, 25, 1042, 1043, 114, 3802}   # char, name, text, bpchar, varchar, json, jsonb (binary: text)


def param_value(value: bytes | None, binary: bool, oid: int = 0) -> Any:
    """A bound parameter as recorded: text as text, the common binary types as their values, others as hex."""
    if value is None:
        return None
    if not binary:
        return value.decode("utf-8", "replace")
    if oid in _BINARY:
        with contextlib.suppress(struct.error):
            return struct.unpack(_BINARY[oid], value)[0]
    if oid in _TEXT_TYPES:
        return value.removeprefix(b"\x01" if oid == 3802 else b"").decode("utf-8", "replace")
    return {"binary": value.hex(), "type": oid}


def statement_row(request_id: str, database: Database, agent: str, client: str, sql: str,
                  params: list[Any] | None, statements: tuple[Statement, ...], decision: Decision, scrub: Any,
                  limit: int) -> dict[str, Any]:
    """The row of a statement as it is about to be sent (or refused): SQL and parameters scrubbed of secrets."""
    body: dict[str, Any] = {"sql": scrub.text(sql)}
    if params is not None:
        body["params"] = json.loads(scrub.text(json.dumps(params)))
    data = json.dumps(body, ensure_ascii=False).encode()
    return {
        "id": request_id,
        "ts": time.time(),
        "agent": agent,
        "client": client,
        "method": method_of(statements),
        "scheme": SCHEME,
        "host": database.name,
        "port": database.port,
        "path": f"/{database.dbname}",
        "url": f"postgresql://{database.name}/{database.dbname}",
        "http_version": "pgwire/3",
        "req_headers": _JSON,
        "req_body": data[:limit] if limit else None,
        "req_body_size": len(data),
        "req_body_sha256": hashlib.sha256(data).hexdigest(),
        "decision": decision.label,
        "rule": decision.rule,
        "reason": scrub.text(decision.reason),
        "report": None,
        "undo_class": undo_class(statements) if decision.effect == "allow" else None,
    }


def refused(reason: str, started: float) -> dict[str, Any]:
    """The outcome of a statement the gateway refused: the error the client was sent."""
    now = time.time()
    return {"error": f"42501 insufficient_privilege: {reason}", "ended": now, "duration_ms": (now - started) * 1000}


def outcome(tags: list[str], error: str | None, started: float, scrub: Any, limit: int) -> dict[str, Any]:
    """How a sent statement ended: its command tags (and the rows they count), or the server's error."""
    now = time.time()
    fields: dict[str, Any] = {"ended": now, "duration_ms": round((now - started) * 1000, 3)}
    data = json.dumps({"tags": tags, "rows": rows_of(tags)}).encode()
    if error is not None:  # the statements of a message that ran before the error keep their tags
        fields |= {"error": scrub.text(error), "status": None}
        if not tags:
            return fields
    else:
        fields |= {"status": COMPLETED, "error": None}
    return fields | {"resp_headers": _JSON,
                     "resp_body": data[:limit] if limit else None, "resp_body_size": len(data),
                     "resp_body_sha256": hashlib.sha256(data).hexdigest()}


def rows_of(tags: list[str]) -> int | None:
    """The rows the command tags count (`UPDATE 3`, `INSERT 0 1`, `SELECT 5`), summed; None when none counts any."""
    counts = [int(tag.rsplit(" ", 1)[1]) for tag in tags if " " in tag and tag.rsplit(" ", 1)[1].isdigit()]
    return sum(counts) if counts else None
