"""Carrying out an undo plan: each step through the pipeline (policy, credentials, audit), journaled before and after."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cel import CelEvalError
from .config import Config
from .policy import PolicySet
from .undoplan import Plan, Step, body_view, header_map

#: Journal states of a step: written before it is sent, and after its answer is judged.
SENT, DONE, FAILED = "sent", "done", "failed"


@dataclass(frozen=True)
class StepResult:
    step: Step
    status: int | None
    ok: bool
    request_id: str | None
    detail: str


class Journal:
    """The write-ahead record of undo steps (table `undo_journal`): what was sent, what was done."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def states(self, request_id: str) -> dict[int, str]:
        """The last state of each step of the undo of `request_id`."""
        rows = self.conn.execute("SELECT step, state FROM undo_journal WHERE request_id = ? ORDER BY seq",
                                 (request_id,)).fetchall()
        return {int(step): str(state) for step, state in rows}

    def write(self, request_id: str, step: int, state: str, detail: str = "", compensation_id: str | None = None) -> None:
        with self.conn:
            self.conn.execute("INSERT INTO undo_journal (request_id, step, state, ts, detail, compensation_id) "
                              "VALUES (?, ?, ?, ?, ?, ?)", (request_id, step, state, time.time(), detail,
                                                            compensation_id))


class Replayer:
    """Sends requests through an in-process pipeline as the original agent, marked as the undo of a request."""

    def __init__(self, config: Config, policies: PolicySet) -> None:
        import httpx

        from .runtime import InProcessProxy

        token = secrets.token_urlsafe(32)
        self.proxy = InProcessProxy(config, policies, token)
        self.client = httpx.Client(proxy=f"http://goex-undo:{token}@127.0.0.1:{self.proxy.port}",
                                   verify=str(config.ca_cert), trust_env=False, timeout=60, follow_redirects=False)

    def send(self, step: Step, agent: str, undo_of: str) -> tuple[int, dict[str, Any], str | None]:
        """Send one request; its status, its response as undo expressions read it, and its audit id."""
        headers = [*step.headers, ("X-Goex-Undo-Agent", agent), ("X-Goex-Undo-Of", undo_of)]
        reply = self.client.request(step.method, step.url, headers=headers, content=step.body)
        view = {"status": reply.status_code, "headers": header_map(reply.headers.items()), **body_view(reply.content)}
        return reply.status_code, view, reply.headers.get("x-goex-request-id")

    def close(self) -> None:
        self.client.close()
        self.proxy.close()


def check_guard(plan: Plan, replayer: Replayer, agent: str) -> tuple[bool, str]:
    """Read the resource now; False and why when someone changed it after the agent."""
    if plan.guard is None or plan.guard_expect is None:
        return True, ""
    status, read, _ = replayer.send(plan.guard, agent, plan.request_id)
    try:
        ok = plan.guard_expect.evaluate({**plan.variables, "read": read})
    except Exception as exc:  # CelEvalError: the read does not have what the guard compares
        return False, f"{plan.conflict} (the check could not be made: {exc})"
    return ok, "" if ok else f"{plan.conflict} (read {plan.guard.describe()} answered {status})"


def run_steps(plan: Plan, replayer: Replayer, journal: Journal, agent: str,
              report: Callable[[StepResult], None]) -> list[StepResult]:
    """Send the steps not yet done, in order; stop at the first that fails."""
    done = {step for step, state in journal.states(plan.request_id).items() if state == DONE}
    results = []
    for index, step in enumerate(plan.steps):
        if index in done:
            continue
        journal.write(plan.request_id, index, SENT, step.describe())
        try:
            status, response, compensation_id = replayer.send(step, agent, plan.request_id)
        except Exception as exc:  # httpx's errors: the proxy or the upstream could not be reached
            result = StepResult(step, None, False, None, f"not sent: {type(exc).__name__}: {exc}")
        else:
            result = _judge(plan, step, status, response, compensation_id)
        journal.write(plan.request_id, index, DONE if result.ok else FAILED, result.detail, result.request_id)
        results.append(result)
        report(result)
        if not result.ok:
            break
    return results


def _judge(plan: Plan, step: Step, status: int, response: dict[str, Any], compensation_id: str | None) -> StepResult:
    """Did the step do what it should (its success condition, else a 2xx)? Why not, if not."""
    if response["headers"].get("x-goex-decision") == "deny":
        reason = response["json"].get("reason", "") if isinstance(response["json"], dict) else ""
        return StepResult(step, status, False, compensation_id, f"denied by policy: {reason}")
    try:
        ok = step.success.evaluate({**plan.variables, "response": response}) if step.success else 200 <= status < 300
    except CelEvalError as exc:
        return StepResult(step, status, False, compensation_id, f"success condition failed: {exc}")
    return StepResult(step, status, ok, compensation_id, "" if ok else response["text"][:300])


@dataclass(frozen=True)
class Outcome:
    """How carrying out one plan ended: "done", "conflict" (nothing sent) or "failed" (stopped at a step)."""

    state: str
    message: str


def carry_out(plan: Plan, replayer: Replayer, journal: Journal, agent: str, force: bool,
              report: Callable[[StepResult], None]) -> Outcome:
    """Check the guard (unless forced), then send the steps not yet done; stop at the first that fails."""
    ok, why = check_guard(plan, replayer, agent)
    if not ok and not force:
        return Outcome("conflict", f"conflict: {why}; nothing was changed (--force overrides)")
    results = run_steps(plan, replayer, journal, agent, report)
    if results and not results[-1].ok:
        undone = sum(1 for r in results if r.ok)
        return Outcome("failed", f"stopped: {undone} of {len(plan.steps)} steps done; the rest were not sent")
    return Outcome("done", f"undone {plan.request_id}")
