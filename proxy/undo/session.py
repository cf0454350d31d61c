"""Undoing several recorded requests (one, an agent's session, or what `execute` made): each planned against the
journal, then the plans carried out in order through one in-process pipeline; and a session's jailed file runs."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..audit import store as audit
from ..audit.seal import Seal
from ..config import Config
from ..errors import GoexError, NotFound
from .plan import SAFE_METHODS, UNGUARDED, Exchange, Plan, plan
from .rules import load_packs
from .run import DONE, Journal, Outcome, Replayer, StepResult, carry_out, one_undo_at_a_time, unjournaled_reason

if TYPE_CHECKING:
    from ..sandbox.runs import Run

#: Why a request whose every undo step is done is passed over.
ALREADY_UNDONE = "already undone"


@dataclass(frozen=True)
class Planned:
    """A recorded request (its full audit row) with its undo plan, the journal's state of each step when it was
    planned, and why it is passed over (None: it is to be undone)."""

    row: dict[str, Any]
    plan: Plan
    states: dict[int, str]
    passed_over: str | None = None

    @property
    def request_id(self) -> str:
        return str(self.row["id"])


def session_rows(conn: sqlite3.Connection, agent: str, since: float | None) -> list[dict[str, Any]]:
    """The requests of an agent's session that may have changed something, newest first, in full: allowed or
    reported, not reads, and not themselves undos."""
    found = audit.query(conn, agent=agent, since=since, limit=None, order="DESC")
    return [audit.get(conn, str(r["id"])) for r in found
            if r["decision"] in ("allow", "report") and not r.get("undo_of") and r["method"] not in SAFE_METHODS]


def newest_first(conn: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """These requests read again in full, newest first (the order they are undone in)."""
    ordered = sorted(rows, key=lambda r: (r["ts"], str(r["id"])), reverse=True)
    return [audit.get(conn, str(r["id"])) for r in ordered]


def plan_rows(config: Config, journal: Journal, rows: Iterable[dict[str, Any]], force: bool) -> Iterator[Planned]:
    """Each row's undo plan, in order and one at a time (so each can be shown as it is made), with why it is passed
    over: its row was edited since it was written, it is itself an undo (unless `force`), there is no plan, or every
    step is already done."""
    rules = load_packs(list(config.undo_packs))
    key = audit.chain_key(journal.conn, Seal(config.state_dir))
    for row in rows:
        rid = str(row["id"])
        states = journal.states(rid)
        the_plan = plan(rid, Exchange.from_row(row), rules)
        done = bool(states) and all(states.get(i) == DONE for i in range(len(the_plan.steps)))
        why: str | None = None
        if (edited := audit.edited(key, row)) is not None:  # never replay what someone else wrote into the log
            why = f"its audit row does not hold: {edited}; `goex-proxy log verify` checks the log"
        elif row.get("undo_of") and not force:
            why = f"it is itself the undo of {row['undo_of']}; undoing it again needs --force"
        elif not force and (lost := unjournaled_reason(journal, rid)):
            why = lost
        elif the_plan.verdict != "plan":
            why = the_plan.reason if the_plan.verdict == "not effective" else f"{the_plan.verdict}: {the_plan.reason}"
        elif done:
            why = ALREADY_UNDONE
        elif the_plan.unguarded and not force:
            why = f"{UNGUARDED}: {the_plan.unguarded}; undoing it anyway (overwriting any later change) needs --force"
        yield Planned(row, the_plan, states, why)


def check_undoable(planned: Planned) -> None:
    """For the undo of one request: raise why it is passed over, NotFound if there is nothing to undo."""
    why = planned.passed_over
    if why is None:
        return
    if why == ALREADY_UNDONE or planned.plan.verdict == "not effective":
        raise NotFound(f"nothing to undo for {planned.request_id}: {why}")
    raise GoexError(f"cannot undo {planned.request_id}: {why}")


@dataclass(frozen=True)
class Carried:
    """How carrying out plans in order ended: those done; the one that did not finish, and how it ended; those after
    it, never attempted."""

    done: list[Planned]
    stopped: Planned | None = None
    outcome: Outcome | None = None
    left: list[Planned] = field(default_factory=list)


def carry_out_all(config: Config, todo: Sequence[Planned], journal: Journal, force: bool,
                  on_step: Callable[[StepResult], None], on_outcome: Callable[[Planned, Outcome], None]) -> Carried:
    """Carry out the plans in order through one in-process pipeline, holding the undo lock, and stop at the first
    that does not finish. `on_step` hears each step sent, `on_outcome` how each plan ended."""
    from ..policy.load import load_policy_set

    with one_undo_at_a_time(config.audit_db):
        replayer = Replayer(config, load_policy_set(config.policy_sources))
        try:
            for index, planned in enumerate(todo):
                outcome = carry_out(planned.plan, replayer, journal, str(planned.row["agent"]), force, on_step)
                on_outcome(planned, outcome)
                if outcome.state != "done":
                    return Carried(list(todo[:index]), planned, outcome, list(todo[index + 1:]))
        finally:
            replayer.close()
    return Carried(list(todo))


def file_runs(config: Config, agent: str, since: float | None) -> list[Run]:
    """The agent's jailed runs since then whose file changes are kept or still pending, newest first."""
    from ..sandbox import runs

    return runs.recorded(config, agent=agent, since=since, limit=None, states=(runs.KEPT, runs.PENDING))


def undo_file_runs(config: Config, found: Iterable[Run], force: bool, on_done: Callable[[Run], None]) -> None:
    """Take back each run's file changes (restored if kept, dropped if pending); `on_done` hears each run after."""
    from ..sandbox import runs

    for run in found:
        on_done(runs.undo(config, run.id, force=force))
