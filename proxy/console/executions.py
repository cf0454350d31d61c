"""Runs of `execute` as the console shows them: the model calls `execute` recorded (proxy/agent/modellog.py), grouped
into runs, with the requests and jailed file runs each made; and keep/undo through the functions the CLI uses."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ..audit import store as audit
from ..config import Config
from ..errors import GoexError, NotFound
from ..sandbox import runs as file_runs
from ..undo import session
from ..undo.run import Journal, StepResult

#: How many runs the list shows (newest first).
LISTED = 200
#: The temporary directory `execute` writes each attempt's program in (proxy/agent/execute.py): a file run whose
#: command names it is one of `execute`'s.
ATTEMPT_DIR = "goex-execute-"


@dataclass
class ExecRun:
    """One `execute`: its first call's number (the run's id), the task, the agent, and every model call in order."""

    id: int
    task: str
    agent: str
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ts(self) -> float:
        return float(self.calls[0]["ts"])

    @property
    def choice(self) -> str:
        return str(self.calls[-1].get("choice") or "-")

    @property
    def request_ids(self) -> list[str]:
        return [rid for c in self.calls for rid in c["row_ids"]]


def _call(row: sqlite3.Row) -> dict[str, Any]:
    call = dict(row)
    try:
        messages = json.loads(call.get("messages") or "[]")
    except ValueError:
        messages = []
    call["message_list"] = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    try:
        ids = json.loads(call.get("rows") or "[]")
    except ValueError:
        ids = []
    call["row_ids"] = [str(i) for i in ids] if isinstance(ids, list) else []
    return call


def _starts_a_run(call: dict[str, Any]) -> bool:
    """An attempt after the first carries the earlier code as an assistant message (execute's revision loop)."""
    return not any(m.get("role") == "assistant" for m in call["message_list"])


def grouped(conn: sqlite3.Connection) -> list[ExecRun]:
    """Every `execute` run, oldest first. A call `execute` recorded with its run (the number of the run's first call)
    is in that run. One recorded before runs were (run NULL) is guessed from the prompt: it starts a run unless it
    revises an earlier one of the same agent and task, and then joins the newest such run of unnumbered calls."""
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM model_calls WHERE kind = 'execute' ORDER BY seq").fetchall()
    finally:
        conn.row_factory = None
    numbered: dict[int, ExecRun] = {}
    found: list[ExecRun] = []
    latest: dict[tuple[str, str], ExecRun] = {}  # the newest guessed run of each agent and task
    for row in rows:
        call = _call(row)
        key = (str(call.get("agent") or ""), str(call.get("subject") or ""))
        if call.get("run") is not None:
            run_id = int(call["run"])
            if run_id not in numbered:
                numbered[run_id] = ExecRun(run_id, key[1], key[0])
                found.append(numbered[run_id])
            numbered[run_id].calls.append(call)
            continue
        if _starts_a_run(call) or key not in latest:
            latest[key] = ExecRun(int(call["seq"]), key[1], key[0])
            found.append(latest[key])
        latest[key].calls.append(call)
    return sorted(found, key=lambda r: r.id)


def listed(conn: sqlite3.Connection) -> list[ExecRun]:
    return list(reversed(grouped(conn)))[:LISTED]


def one(conn: sqlite3.Connection, run_id: int) -> tuple[ExecRun, float | None]:
    """Run `run_id` and when the agent's next `execute` began (None: none since)."""
    every = grouped(conn)
    for i, run in enumerate(every):
        if run.id == run_id:
            after = next((r.ts for r in every[i + 1:] if r.agent == run.agent), None)
            return run, after
    raise NotFound(f"no execute run {run_id}")


def requests(conn: sqlite3.Connection, run: ExecRun) -> list[dict[str, Any]]:
    """The audit rows the run's attempts made (as `execute` recorded them), oldest first."""
    out = []
    for rid in run.request_ids:
        try:
            out.append(audit.get(conn, rid))
        except NotFound:
            continue
    return out


def file_runs_of(config: Config, run: ExecRun, until: float | None) -> list[file_runs.Run]:
    """The jailed file runs of the run's attempts: the agent's, started in its time, running an attempt's program."""
    found = file_runs.recorded(config, agent=run.agent, since=run.ts, limit=None)
    return sorted((r for r in found if (until is None or r.ts < until)
                   and any(ATTEMPT_DIR in str(part) for part in r.command)), key=lambda r: r.ts)


@dataclass
class Undone:
    """What undoing a run's requests did: each plan's request and how it ended, the steps sent, those passed over."""

    ended: list[tuple[str, str, str]] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def undo_requests(config: Config, rows: list[dict[str, Any]], force: bool) -> Undone:
    """Undo these rows newest first, as `execute`'s undo does (proxy/cli/undo.py undo_rows): planned against the
    journal, those passed over said, the rest carried out in order through the undo engine."""
    conn = audit.connect(config)
    try:
        journal = Journal(conn)
        done = Undone()
        planned = list(session.plan_rows(config, journal, session.newest_first(conn, rows), force))
        done.skipped = [(p.request_id, str(p.passed_over)) for p in planned if p.passed_over is not None]
        todo = [p for p in planned if p.passed_over is None]
        if todo:
            session.carry_out_all(config, todo, journal, force, done.steps.append,
                                  lambda p, o: done.ended.append((p.request_id, o.state, o.message)))
        return done
    finally:
        conn.close()


def decide_files(config: Config, run_id: str, action: str, force: bool) -> str:
    """Keep or undo one file run, as `goex-proxy files keep/undo RUN` does; what became of it, in a sentence."""
    if action == "keep":
        kept = file_runs.keep(config, run_id, force=force)
        return f"kept the file changes of run {kept.id} in {kept.workspace}"
    if action == "undo":
        undone = file_runs.undo(config, run_id, force=force)
        return (f"restored {undone.workspace} as it was before run {undone.id}" if undone.state == file_runs.UNDONE
                else f"dropped the unapplied changes of run {undone.id}")
    raise GoexError(f"no file action {action!r}")
