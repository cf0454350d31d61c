"""Undo from the console: a row's plan from the planner `goex-proxy undo` uses, carried out by the same engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..audit import store as audit
from ..config import Config
from ..errors import GoexError
from ..undo import session
from ..undo.run import Journal, StepResult

if TYPE_CHECKING:
    from ..db.rowundo import RowPlan
    from ..sandbox.runs import Run


@dataclass(frozen=True)
class Shown:
    """A row's undo plan as its page shows it, and whether `force` would make a passed-over plan undoable."""

    planned: session.Planned
    forceable: bool


@dataclass(frozen=True)
class StatementShown:
    """An SQL statement's undo as its page shows it: the rows it restores, or why it cannot now."""

    plan: RowPlan | None
    passed_over: str | None


@dataclass
class Done:
    """How carrying out one request's undo ended: "done", "conflict", "failed", or "refused" (not undoable);
    `forceable` when a conflict may be overridden (never for SQL rows: a changed row is never overwritten)."""

    state: str
    message: str
    steps: list[StepResult] = field(default_factory=list)
    forceable: bool = True


def is_statement(row: dict[str, Any]) -> bool:
    """A statement the database gateway ran: undone from its captured rows, not by an HTTP rule."""
    from ..db.record import SCHEME

    return row.get("scheme") == SCHEME


def show_statement(config: Config, conn: Any, row: dict[str, Any]) -> StatementShown:
    """The statement's undo plan as `goex-proxy undo ID --dry-run` shows it (planning reads only the log)."""
    from ..db import rowundo

    try:
        return StatementShown(rowundo.plan_undo(config, conn, row), None)
    except GoexError as exc:  # NotFound too: not captured, did not run, an undo itself, edited, already undone
        return StatementShown(None, str(exc).split(": ", 1)[-1])


def _carry_out_statement(config: Config, conn: Any, row: dict[str, Any], force: bool) -> Done:
    """Restore the statement's rows upstream, as `goex-proxy undo ID --yes` does: refused on a conflict, nothing
    changed."""
    from ..db import rowundo
    from ..undo.run import one_undo_at_a_time

    if force:
        return Done("refused", "not undone: a changed row is never overwritten (there is no force for SQL)",
                    forceable=False)
    shown = show_statement(config, conn, row)
    if shown.plan is None or shown.passed_over is not None:
        return Done("refused", f"not undone: {shown.passed_over}", forceable=False)
    try:
        with one_undo_at_a_time(config.audit_db):
            tags = rowundo.carry_out(config, row, shown.plan)
    except rowundo.Conflict as exc:
        return Done("conflict", str(exc), forceable=False)
    return Done("done", f"undone {shown.plan.request_id}: {', '.join(tags) or 'nothing to change'}", forceable=False)


def show(config: Config, conn: Any, row: dict[str, Any]) -> Shown:
    """The row's undo plan with the journal's state of each step (planning sends nothing)."""
    journal = Journal(conn)
    planned = next(session.plan_rows(config, journal, [row], False))
    forceable = False
    if planned.passed_over is not None and planned.passed_over != session.ALREADY_UNDONE:
        forceable = next(session.plan_rows(config, journal, [row], True)).passed_over is None
    return Shown(planned, forceable)


def carry_out(config: Config, request_id: str, force: bool) -> Done:
    """Plan the request again (the log may have moved on since the page was shown) and carry the plan out through the
    in-process pipeline, as `goex-proxy undo ID --yes [--force]` does."""
    conn = audit.connect(config)
    try:
        journal = Journal(conn)
        row = audit.get(conn, request_id)
        if is_statement(row):
            return _carry_out_statement(config, conn, row, force)
        planned = next(session.plan_rows(config, journal, [row], force))
        if planned.passed_over is not None:
            return Done("refused", f"not undone: {planned.passed_over}")
        done = Done("failed", "")

        def ended(_: session.Planned, outcome: Any) -> None:
            done.state, done.message = outcome.state, outcome.message

        session.carry_out_all(config, [planned], journal, force, done.steps.append, ended)
        return done
    finally:
        conn.close()


@dataclass
class SessionPlan:
    """An agent's session as `goex-proxy undo --agent A --since WHEN` plans it (its requests newest first, each with
    its plan or why it is passed over, and its jailed runs' file changes), narrowed to `until` when given."""

    planned: list[session.Planned]
    file_runs: list[Run]
    statements: list[tuple[dict[str, Any], StatementShown]] = field(default_factory=list)

    @property
    def todo(self) -> list[session.Planned]:
        return [p for p in self.planned if p.passed_over is None]

    @property
    def statements_todo(self) -> list[dict[str, Any]]:
        return [row for row, shown in self.statements if shown.passed_over is None]


def plan_session(config: Config, agent: str, since: float, until: float | None, force: bool = False) -> SessionPlan:
    conn = audit.connect(config)
    try:
        rows = [r for r in session.session_rows(conn, agent, since) if until is None or r["ts"] <= until]
        from ..db.rowundo import may_change_rows

        statements = [(r, show_statement(config, conn, r)) for r in rows if is_statement(r) and may_change_rows(r)]
        planned = list(session.plan_rows(config, Journal(conn), [r for r in rows if not is_statement(r)], force))
    finally:
        conn.close()
    found = [r for r in session.file_runs(config, agent, since) if until is None or r.ts <= until]
    return SessionPlan(planned, found, statements)


@dataclass
class SessionDone:
    """How carrying out a session's plans ended: each file run's end, each plan's, the steps sent, those passed over
    or never attempted, and whether it stopped at a conflict (then force is the person's explicit second step)."""

    files: list[tuple[str, bool, str]] = field(default_factory=list)
    ended: list[tuple[str, str, str]] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    conflict: bool = False


def carry_out_session(config: Config, agent: str, request_ids: list[str], run_ids: list[str], force: bool
                      ) -> SessionDone:
    """Carry out the plans the person confirmed: these requests and file runs of `agent` (anything else is refused),
    planned again (the log may have moved on), file runs first and then the requests newest first, as `goex-proxy
    undo --agent A --since WHEN --yes [--force]` does: its SQL statements first, newest first, each restored
    unforced (a changed row is never overwritten)."""
    from ..sandbox import runs

    done = SessionDone()
    conn = audit.connect(config)
    try:
        rows = [audit.get(conn, rid) for rid in request_ids]
        if any(r["agent"] != agent for r in rows):
            raise GoexError(f"a request confirmed is not {agent}'s; nothing was done")
        found = [runs.load(config, rid) for rid in run_ids]
        if any(r.agent != agent for r in found):
            raise GoexError(f"a file run confirmed is not {agent}'s; nothing was done")
        for row in session.newest_first(conn, [r for r in rows if is_statement(r)]):
            try:
                restored = _carry_out_statement(config, conn, row, False)
            except GoexError as exc:  # its transaction rolled back; newer ones restored stay listed as done
                restored = Done("failed", str(exc), forceable=False)
            done.ended.append((str(row["id"]), restored.state, restored.message))
        rows = [r for r in rows if not is_statement(r)]
        journal = Journal(conn)
        planned = list(session.plan_rows(config, journal, session.newest_first(conn, rows), force))
        for run in found:
            try:
                ended = runs.undo(config, run.id, force=force)
                done.files.append((run.id, True, f"file run {run.id}: {ended.state}"))
            except GoexError as exc:
                done.files.append((run.id, False, f"file run {run.id}: {exc}"))
                done.conflict = done.conflict or "changed since the run" in str(exc)
        done.skipped = [(p.request_id, str(p.passed_over)) for p in planned if p.passed_over is not None]
        todo = [p for p in planned if p.passed_over is None]
        if todo:
            carried = session.carry_out_all(config, todo, journal, force, done.steps.append,
                                            lambda p, o: done.ended.append((p.request_id, o.state, o.message)))
            done.left = [p.request_id for p in carried.left]
            done.conflict = done.conflict or bool(carried.outcome and carried.outcome.state == "conflict")
        return done
    finally:
        conn.close()
