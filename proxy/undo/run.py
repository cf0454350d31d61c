"""Carrying out an undo plan: each step through the pipeline (policy, credentials, audit), journaled before and after."""

from __future__ import annotations

import contextlib
import fcntl
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..audit import layout
from ..audit import store as audit
from ..config import Config
from ..errors import GoexError, NotFound
from ..hostkey import host_key
from ..ids import RequestIds
from ..policy.cel import CelEvalError, Condition
from ..policy.engine import PolicySet
from ..policy.requestview import canonical_path
from .plan import READ_METHODS, Plan, Step, message_view, read_failed, read_refused

#: Journal states of a step: written before it is sent, and after its answer is judged.
SENT, DONE, FAILED = "sent", "done", "failed"
new_request_id = RequestIds().new
#: Conditional request headers, which --force leaves out of the steps it sends.
PRECONDITIONS = frozenset({"if-match", "if-none-match", "if-unmodified-since", "if-modified-since"})


@dataclass(frozen=True)
class StepResult:
    step: Step
    status: int | None
    ok: bool
    request_id: str | None
    detail: str
    conflict: bool = False   # a conditional request found the resource changed since the agent: nothing clobbered
    sent: str = ""           # the request as the audit log recorded it going upstream ("" if it never went)

    def describe(self) -> str:
        """The request that went upstream for this step (as planned, else what was planned and never sent)."""
        return self.sent or self.step.describe()


class Journal:
    """The write-ahead record of undo steps (table `undo_journal`): what was sent, what was done."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def states(self, request_id: str) -> dict[int, str]:
        """The last state of each step of the undo of `request_id`."""
        return {step: state for step, (state, _) in self.entries(request_id).items()}

    def entries(self, request_id: str) -> dict[int, tuple[str, str | None]]:
        """The last state of each step, with the audit id of the compensation it concerns."""
        rows = self.conn.execute("SELECT step, state, compensation_id FROM undo_journal WHERE request_id = ? "
                                 "ORDER BY seq", (request_id,)).fetchall()
        return {int(step): (str(state), cid) for step, state, cid in rows}

    def unjournaled(self, request_id: str) -> list[str]:
        """The requests the chained audit log records as sent to undo `request_id` (its guard's reads aside) that
        this journal does not name: a journal that lost its entries (it is not chained) would send them again."""
        named = {cid for (cid,) in self.conn.execute("SELECT compensation_id FROM undo_journal WHERE request_id = ?",
                                                     (request_id,))}
        sent = self.conn.execute(f"SELECT id FROM requests WHERE undo_of = ? AND method NOT IN "
                                 f"({', '.join('?' * len(READ_METHODS))}) ORDER BY seq",
                                 (request_id, *READ_METHODS)).fetchall()
        return [rid for rid in (str(layout.id_read(stored)) for (stored,) in sent) if rid not in named]

    def write(self, request_id: str, step: int, state: str, detail: str = "", compensation_id: str | None = None) -> None:
        with self.conn:
            self.conn.execute("INSERT INTO undo_journal (request_id, step, state, ts, detail, compensation_id) "
                              "VALUES (?, ?, ?, ?, ?, ?)", (request_id, step, state, time.time(), detail,
                                                            compensation_id))


@contextlib.contextmanager
def one_undo_at_a_time(audit_db: Path) -> Iterator[None]:
    """Hold the undo lock of an audit log: two undos at once could both send the same step."""
    with open(audit_db.with_name(audit_db.name + ".undo-lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GoexError("another goex-proxy undo is running on this audit log; wait for it to finish") from None
        yield


class Replayer:
    """Sends requests through an in-process pipeline as the original agent, marked as the undo of a request."""

    def __init__(self, config: Config, policies: PolicySet) -> None:
        import httpx

        from ..runtime import InProcessProxy

        token = secrets.token_urlsafe(32)
        self.config = config
        self.proxy = InProcessProxy(config, policies, token)
        self.client = httpx.Client(proxy=f"http://goex-undo:{token}@127.0.0.1:{self.proxy.port}",
                                   verify=str(config.ca_cert), trust_env=False, timeout=60, follow_redirects=False)

    def send(self, step: Step, agent: str, undo_of: str, request_id: str | None = None
             ) -> tuple[int, dict[str, Any], str | None]:
        """Send one request (audited under `request_id` if given); its status, its response as undo expressions
        read it, and its audit id."""
        headers = [*step.headers, ("X-Goex-Undo-Agent", agent), ("X-Goex-Undo-Of", undo_of)]
        if request_id is not None:
            headers.append(("X-Goex-Undo-Request-Id", request_id))
        reply = self.client.request(step.method, step.url, headers=headers, content=step.body)
        return reply.status_code, response_view(reply.status_code, reply.headers.items(), reply.content), \
            reply.headers.get("x-goex-request-id")

    def credential_for(self, step: Step) -> str | None:
        """The credential the pipeline will inject into this step, chosen as its inject stage chooses (the first
        bound to the host, method and canonical path); None if it will go without one."""
        parts = urlsplit(step.url)
        host, path = host_key(parts.hostname or ""), canonical_path(parts.path or "/")
        if path is None:
            return None
        return next((c.name for c in self.config.credentials.values() if c.binds(host, step.method.upper(), path)),
                    None)

    def close(self) -> None:
        self.client.close()
        self.proxy.close()


def response_view(status: int, headers: Iterable[tuple[str, str]], body: bytes | None) -> dict[str, Any]:
    """A response as undo expressions read it."""
    return {"status": status, **message_view(headers, body)}


def check_guard(plan: Plan, replayer: Replayer, agent: str) -> tuple[str, str]:
    """Read the resource now: "ok", "conflict" (someone changed it after the agent) or "failed", with why. Failed is
    a read that could not be made or says nothing about the resource: policy denied it, the upstream refused it
    (401, 403, 407, or the rule's `refused`), failed (5xx) or throttled it (429), or it went without the credential
    the agent's request had. Only a read that worked and does not show what the guard expects is a conflict."""
    if plan.guard is None or plan.guard_expect is None:
        return "ok", ""
    check = plan.guard.describe()
    try:
        status, read, _ = replayer.send(plan.guard, agent, plan.request_id)
    except Exception as exc:  # httpx's errors: the proxy or the upstream could not be reached
        return "failed", f"the check {check} could not be sent: {type(exc).__name__}: {exc}"
    if read["headers"].get("x-goex-decision") in ("deny", "error"):
        reason = read["json"].get("reason", "") if isinstance(read["json"], dict) else ""
        return "failed", f"the check {check} was refused by the proxy ({status}): {reason}"
    variables = {**plan.variables, "read": read}
    missing = missing_credential(plan, replayer, plan.guard)
    if read_refused(status) or _holds(plan.guard_refused, variables):
        return "failed", (f"the check {check} was refused by the upstream ({_answer(status, read)}), so whether "
                          f"the resource changed since the agent cannot be told; "
                          + (missing or refused_credential(replayer, plan.guard)))
    if missing:
        return "failed", (f"the check {check} answered {status}, but went without a credential, so it says nothing "
                          f"of the resource; {missing}")
    if read_failed(status):
        return "failed", (f"the check {check} failed upstream ({_answer(status, read)}), so whether the resource "
                          "changed since the agent cannot be told; try again later")
    try:
        ok = plan.guard_expect.evaluate(variables)
    except Exception as exc:  # CelEvalError: the read does not have what the guard compares
        return "conflict", f"{plan.conflict} (the check could not be made: {exc})"
    return ("ok", "") if ok else ("conflict", f"{plan.conflict} (read {check} answered {status})")


def _holds(condition: Condition | None, variables: dict[str, Any]) -> bool:
    try:
        return condition is not None and condition.evaluate(variables)
    except CelEvalError:
        return False


def _answer(status: int, response: dict[str, Any]) -> str:
    """A status with the start of the body that came with it (an error code, usually)."""
    text = " ".join(str(response.get("text", "")).split())[:200]
    return f"{status}: {text}" if text else str(status)


def missing_credential(plan: Plan, replayer: Replayer, step: Step) -> str:
    """Why `step` cannot work, if the agent's request was sent with a credential and none would be injected into
    `step` (it was removed from the config, or no longer binds there); else ""."""
    if plan.credential is None or replayer.credential_for(step) is not None:
        return ""
    host = urlsplit(step.url).hostname or step.url
    return (f"no credential is configured for {host} (the agent's request was sent with credential "
            f"'{plan.credential}'): undo sends its requests with the credential configured for the host, so it "
            f"needs that credential in the config again")


def refused_credential(replayer: Replayer, step: Step) -> str:
    """What to check when the upstream refused `step` (401/403)."""
    host = urlsplit(step.url).hostname or step.url
    name = replayer.credential_for(step)
    if name is None:
        return f"no credential is configured for {host}: undo needs one for it"
    return f"the credential '{name}' configured for {host} was refused: it may lack the permission, or be out of date"


def run_steps(plan: Plan, replayer: Replayer, journal: Journal, agent: str,
              report: Callable[[StepResult], None], force: bool = False) -> list[StepResult]:
    """Send the steps not yet done, in order; stop at the first that fails. A step an earlier run sent but never
    judged (it was interrupted) is judged from its audit row if the answer was recorded, sent again if it never
    left or is `repeatable`, and otherwise stops the undo (it may or may not have been applied) unless forced."""
    entries = journal.entries(plan.request_id)
    results = []
    for index, step in enumerate(plan.steps):
        state, earlier_id = entries.get(index, ("", None))
        if state == DONE:
            continue
        result = None
        if state == SENT and earlier_id is not None:
            result = _resume(plan, step, journal.conn, earlier_id, force)
        if result is None:
            if force:  # the person overrides: no If-Match and the like to refuse the step as stale
                step = replace(step, headers=tuple((k, v) for k, v in step.headers if k.lower() not in PRECONDITIONS))
            compensation_id = new_request_id()
            journal.write(plan.request_id, index, SENT, step.describe(), compensation_id)
            try:
                status, response, _ = replayer.send(step, agent, plan.request_id, compensation_id)
            except Exception as exc:  # httpx's errors: the proxy or the upstream could not be reached
                result = StepResult(step, None, False, None, f"not sent: {type(exc).__name__}: {exc}")
            else:
                result = _judge(plan, step, status, response, compensation_id)
                if not result.ok and not result.conflict and read_refused(status):
                    result = replace(result, detail=f"{result.detail}; {refused_credential(replayer, step)}")
                result = _as_sent(result, journal.conn)
        journal.write(plan.request_id, index, DONE if result.ok else FAILED, result.detail, result.request_id)
        results.append(result)
        report(result)
        if not result.ok:
            break
    return results


def _as_sent(result: StepResult, conn: sqlite3.Connection) -> StepResult:
    """The result with the request its audit row says went upstream; failed if that is not the planned request
    (a compensation must go exactly as planned: nothing in the pipeline may turn it into another call)."""
    if result.request_id is None:  # never recorded: nothing to compare
        return result
    term, forms = layout.id_term(result.request_id)
    found = list(layout.read(conn, f"SELECT method, scheme, host, port, path, url FROM requests WHERE {term}", forms))
    if not found:
        return result
    method, url = str(found[0]["method"]), str(found[0]["url"])
    sent = f"{method} {url}"
    planned, went = urlsplit(result.step.url), urlsplit(url)
    if method.upper() == result.step.method and (planned.hostname, unquote(planned.path), planned.query) == (
            went.hostname, unquote(went.path), went.query):
        return replace(result, sent=sent)
    return replace(result, sent=sent, ok=False, conflict=False,
                   detail=f"the pipeline sent {sent} instead of the planned {result.step.describe()}")


def _resume(plan: Plan, step: Step, conn: sqlite3.Connection, compensation_id: str, force: bool
            ) -> StepResult | None:
    """What became of a step an interrupted undo sent: judged from its recorded answer; None to send it (again)."""
    try:
        row = None if step.repeatable else audit.get(conn, compensation_id)
    except NotFound:
        row = None
    if row is None:  # never recorded, so never forwarded; or harmless to repeat
        return None
    status, headers, body = row["status"], row["resp_headers"], row["resp_body"]
    if status is None and force:
        return None
    if status is None:
        return StepResult(step, None, False, compensation_id, "an earlier, interrupted undo sent this step and its "
                          "answer was never recorded: it may or may not have been applied. Check, then re-run with "
                          "--force to send it again")
    pairs = [(str(k), str(v)) for k, v in json.loads(headers)] if headers else []
    return _judge(plan, step, int(status), response_view(int(status), pairs, body), compensation_id)


def _judge(plan: Plan, step: Step, status: int, response: dict[str, Any], compensation_id: str | None) -> StepResult:
    """Did the step do what it should (its success condition, else a 2xx)? Why not, if not."""
    if response["headers"].get("x-goex-decision") == "deny":
        reason = response["json"].get("reason", "") if isinstance(response["json"], dict) else ""
        return StepResult(step, status, False, compensation_id, f"denied by policy: {reason}")
    variables = {**plan.variables, "response": response}
    try:
        ok = step.success.evaluate(variables) if step.success else 200 <= status < 300
        stale = not ok and (step.conflict.evaluate(variables) if step.conflict else status == 412)
    except CelEvalError as exc:
        return StepResult(step, status, False, compensation_id, f"success condition failed: {exc}")
    if stale:
        why = plan.conflict or "the resource changed after the agent's request"
        return StepResult(step, status, False, compensation_id,
                          f"{why}: the upstream refused the conditional request ({status})", conflict=True)
    if not ok and read_refused(status):
        return StepResult(step, status, False, compensation_id, f"refused by the upstream ({_answer(status, response)})")
    return StepResult(step, status, ok, compensation_id, "" if ok else response["text"][:300])


def unjournaled_reason(journal: Journal, request_id: str) -> str:
    """Why an undo of `request_id` must not go ahead on its journal's word ("" if it may): the audit log shows
    compensations sent that the journal has lost, so it may be undone already."""
    lost = journal.unjournaled(request_id)
    if not lost:
        return ""
    return (f"the audit log holds {len(lost)} request{'s' if len(lost) > 1 else ''} sent as its undo "
            f"({', '.join(lost[:3])}{', …' if len(lost) > 3 else ''}) that its undo journal does not list (the journal "
            "was edited or lost), so it may be undone already; look with `goex-proxy show`, then --force to undo it "
            "again")


@dataclass(frozen=True)
class Outcome:
    """How carrying out one plan ended: "done", "conflict" (nothing sent) or "failed" (stopped at a step)."""

    state: str
    message: str


def carry_out(plan: Plan, replayer: Replayer, journal: Journal, agent: str, force: bool,
              report: Callable[[StepResult], None]) -> Outcome:
    """Check the guard (unless forced), then send the steps not yet done; stop at the first that fails."""
    if not force and (lost := unjournaled_reason(journal, plan.request_id)):
        return Outcome("failed", f"stopped before any step: {lost}; nothing was sent")
    state, why = check_guard(plan, replayer, agent)
    if state == "failed":
        return Outcome("failed", f"stopped before any step: {why}; nothing was changed")
    if state == "conflict" and not force:
        return Outcome("conflict", f"conflict: {why}; nothing was changed (--force overrides)")
    done = journal.states(plan.request_id)
    for index, step in enumerate(plan.steps):
        missing = missing_credential(plan, replayer, step) if done.get(index) != DONE else ""
        if missing:  # it would go unsigned: refused at best, and "already gone" (404) mistaken for done at worst
            return Outcome("failed", f"stopped before {step.describe()}: {missing}; it was not sent")
    results = run_steps(plan, replayer, journal, agent, report, force)
    if results and results[-1].conflict:
        undone = sum(1 for r in results if r.ok)
        return Outcome("conflict", f"conflict: {results[-1].detail}; {undone} of {len(plan.steps)} steps done, "
                                   "nothing was overwritten")
    if results and not results[-1].ok:
        undone = sum(1 for r in results if r.ok)
        return Outcome("failed", f"stopped: {undone} of {len(plan.steps)} steps done; the rest were not sent")
    return Outcome("done", f"undone {plan.request_id}")
