"""The record of the supervising model's work: each question asked, its answer, and what became of it."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Literal

from ..config import LLM

#: `run=NEW_RUN`: the call is the first of a run, whose number is its own.
NEW_RUN: Literal["new"] = "new"


def record_call(conn: sqlite3.Connection, kind: str, agent: str | None, subject: str, llm: LLM,
                messages: list[dict[str, str]], reply: str | None = None, error: str | None = None,
                run: int | Literal["new"] | None = None) -> int:
    """Store one question to the model (`kind`: execute or propose; `subject`: the task or the request id) and its
    reply or the error asking it; the row's number, for `update` later. `run`: the run of `execute` it belongs to,
    the number of the run's first call (NEW_RUN for that first call itself, set in the same transaction)."""
    with conn:
        cursor = conn.execute(
            "INSERT INTO model_calls (ts, kind, agent, subject, model, base_url, messages, reply, error, run) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), kind, agent, subject, llm.model, llm.base_url, json.dumps(messages), reply, error,
             None if run == NEW_RUN else run))
        seq = int(cursor.lastrowid or 0)
        if run == NEW_RUN:
            conn.execute("UPDATE model_calls SET run = seq WHERE seq = ?", (seq,))
    return seq


def update(conn: sqlite3.Connection, seq: int, **fields: Any) -> None:
    """Add what happened after the answer: `code` run, its `exit_code`, the audit `rows` it made, the `choice`."""
    allowed = {"reply", "error", "code", "exit_code", "rows", "choice"}
    if not fields or set(fields) - allowed:
        raise ValueError(f"model_calls fields are {sorted(allowed)} (got {sorted(fields)})")
    values = [json.dumps(v) if isinstance(v, (list, dict)) else v for v in fields.values()]
    with conn:
        conn.execute(f"UPDATE model_calls SET {', '.join(f'{k} = ?' for k in fields)} WHERE seq = ?", (*values, seq))


def calls(conn: sqlite3.Connection, subject: str | None = None) -> list[dict[str, Any]]:
    """Recorded calls, oldest first (only those about `subject`, if given)."""
    conn.row_factory = sqlite3.Row
    try:
        query = "SELECT * FROM model_calls" + (" WHERE subject = ?" if subject is not None else "") + " ORDER BY seq"
        return [dict(r) for r in conn.execute(query, (subject,) if subject is not None else ())]
    finally:
        conn.row_factory = None
