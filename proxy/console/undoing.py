"""Undo from the console: a row's plan from the planner `goex-proxy undo` uses, carried out by the same engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..audit import store as audit
from ..config import Config
from ..undo import session
from ..undo.run import Journal, StepResult


@dataclass(frozen=True)
class Shown:
    """A row's undo plan as its page shows it, and whether `force` would make a passed-over plan undoable."""

    planned: session.Planned
    forceable: bool


@dataclass
class Done:
    """How carrying out one request's undo ended: "done", "conflict", "failed", or "refused" (not undoable)."""

    state: str
    message: str
    steps: list[StepResult] = field(default_factory=list)


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
