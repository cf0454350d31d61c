"""Resuming an interrupted undo from its journal and the audit rows of the steps it sent."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from goex_proxy import ids
from goex_proxy.audit import blobs, layout
from goex_proxy.audit import store as audit
from goex_proxy.audit.seal import Seal
from goex_proxy.errors import GoexError
from goex_proxy.ids import packed
from goex_proxy.policy.cel import compile_condition
from goex_proxy.undo.plan import Plan, Step
from goex_proxy.undo.run import DONE, FAILED, SENT, Journal, carry_out, one_undo_at_a_time, run_steps


class Sender:
    """Stands in for the network: counts what would be sent and answers 200."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None]] = []

    def send(self, step: Step, agent: str, undo_of: str, request_id: str | None = None
             ) -> tuple[int, dict[str, Any], str | None]:
        self.sent.append((step.url, request_id))
        return 200, {"status": 200, "headers": {}, "body": b"{}", "text": "{}", "json": {}, "form": {}}, request_id


def _plan(*steps: Step) -> Plan:
    return Plan("ORIGINAL00001", "plan", steps=steps)


def _post(url: str, repeatable: bool = False) -> Step:
    return Step("POST", url, (), b"{}", "why", None, repeatable)


def _row(conn: Any, request_id: str, status: int | None, body: bytes = b'{"ok": true}') -> None:
    """A row of the log as stored (its headers and body in blobs), with a hash nobody checks here."""
    fields = {"id": request_id, "ts": 0.0, "agent": "bot", "method": "POST", "scheme": "https", "host": "x",
              "port": 443, "path": "/a", "url": "https://x/a", "decision": "allow", "status": status,
              "resp_headers": json.dumps([["Content-Type", "application/json"]]), "resp_body": body, "hash": "h",
              "prev_hash": ""}
    store = blobs.BlobStore()
    with conn:
        kept = layout.stored(fields, lambda value, family: store.put(conn, value, family))
        conn.execute(f"INSERT INTO requests ({', '.join(kept)}) VALUES ({', '.join('?' * len(kept))})",
                     tuple(kept.values()))


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(audit.open_db(tmp_path / "audit.db", seal=Seal(tmp_path)))


def test_a_step_whose_answer_was_recorded_is_judged_from_the_log_not_sent_again(journal: Journal) -> None:
    plan = _plan(_post("https://x/first"), _post("https://x/second"))
    journal.write(plan.request_id, 0, SENT, "", "COMPENSATION1")
    _row(journal.conn, "COMPENSATION1", 200)          # answered and audited; the journal never heard
    sender = Sender()
    results = run_steps(plan, sender, journal, "bot", lambda r: None)  # type: ignore[arg-type]
    assert [r.ok for r in results] == [True, True]
    assert [url for url, _ in sender.sent] == ["https://x/second"]
    assert journal.states(plan.request_id) == {0: DONE, 1: DONE}


def test_a_recorded_failure_stops_the_undo(journal: Journal) -> None:
    plan = _plan(_post("https://x/first"), _post("https://x/second"))
    journal.write(plan.request_id, 0, SENT, "", "COMPENSATION1")
    _row(journal.conn, "COMPENSATION1", 500, b"upstream broke")
    sender = Sender()
    results = run_steps(plan, sender, journal, "bot", lambda r: None)  # type: ignore[arg-type]
    assert [r.ok for r in results] == [False] and sender.sent == []
    assert journal.states(plan.request_id) == {0: FAILED}


def test_a_step_never_recorded_never_left_and_is_sent(journal: Journal) -> None:
    plan = _plan(_post("https://x/first"))
    journal.write(plan.request_id, 0, SENT, "", "COMPENSATION1")   # killed before the proxy recorded it
    sender = Sender()
    results = run_steps(plan, sender, journal, "bot", lambda r: None)  # type: ignore[arg-type]
    assert [r.ok for r in results] == [True]
    assert len(sender.sent) == 1 and sender.sent[0][1] != "COMPENSATION1"  # a fresh audit id for the new attempt


@pytest.mark.parametrize(("repeatable", "force", "sent"), [(False, False, 0), (True, False, 1), (False, True, 1)])
def test_a_step_sent_but_unanswered_is_repeated_only_if_repeatable_or_forced(
        journal: Journal, repeatable: bool, force: bool, sent: int) -> None:
    plan = _plan(_post("https://x/first", repeatable))
    journal.write(plan.request_id, 0, SENT, "", "COMPENSATION1")
    _row(journal.conn, "COMPENSATION1", None)           # forwarded, maybe applied, answer lost
    sender = Sender()
    results = run_steps(plan, sender, journal, "bot", lambda r: None, force)  # type: ignore[arg-type]
    assert len(sender.sent) == sent and results[0].ok == bool(sent)
    if not sent:
        assert "may or may not have been applied" in results[0].detail


def test_steps_are_journaled_with_the_audit_id_chosen_before_sending(journal: Journal) -> None:
    plan = _plan(_post("https://x/first"))
    sender = Sender()
    run_steps(plan, sender, journal, "bot", lambda r: None)  # type: ignore[arg-type]
    rows = journal.conn.execute("SELECT state, compensation_id FROM undo_journal ORDER BY seq").fetchall()
    assert [state for state, _ in rows] == [SENT, DONE]
    assert rows[0][1] == rows[1][1] == sender.sent[0][1] and ids.is_request_id(rows[0][1])


def test_only_one_undo_runs_at_a_time_on_an_audit_log(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with one_undo_at_a_time(db):
        with pytest.raises(GoexError, match="another goex-proxy undo is running"):
            with one_undo_at_a_time(db):
                pass
    with one_undo_at_a_time(db):  # released once the first finished
        pass


class Refusing(Sender):
    """An upstream that refuses conditional requests as stale with `status`."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__()
        self.status, self.body = status, body
        self.headers: list[tuple[tuple[str, str], ...]] = []

    def send(self, step: Step, agent: str, undo_of: str, request_id: str | None = None
             ) -> tuple[int, dict[str, Any], str | None]:
        self.headers.append(step.headers)
        return self.status, {"status": self.status, "headers": {}, "body": b"", "text": json.dumps(self.body),
                             "json": self.body, "form": {}}, request_id


def test_a_conditional_step_refused_as_stale_is_a_conflict_not_a_failure(journal: Journal) -> None:
    step = Step("PUT", "https://x/a", (("If-Match", '"abc"'),), b"old", "why")
    outcome = carry_out(_plan(step), Refusing(412, {}), journal, "bot", False, lambda r: None)  # type: ignore[arg-type]
    assert outcome.state == "conflict" and "nothing was overwritten" in outcome.message


def test_a_rule_says_what_a_stale_answer_looks_like(journal: Journal) -> None:
    """GitHub answers 409 to a stale `sha`; the step's `conflict` condition says so."""
    step = Step("PUT", "https://x/a", (), b"{}", "why", None, True,
                compile_condition("response.status == 409", frozenset({"response"})))
    outcome = carry_out(_plan(step), Refusing(409, {"message": "a does not match"}), journal, "bot", False,
                        lambda r: None)  # type: ignore[arg-type]
    assert outcome.state == "conflict"
    outcome = carry_out(_plan(step), Refusing(500, {}), journal, "bot", False, lambda r: None)  # type: ignore[arg-type]
    assert outcome.state == "failed"


def test_force_sends_steps_without_their_preconditions(journal: Journal) -> None:
    step = Step("PUT", "https://x/a", (("If-Match", '"abc"'), ("Content-Type", "text/plain")), b"old", "why")
    sender = Refusing(200, {})
    assert carry_out(_plan(step), sender, journal, "bot", True, lambda r: None).state == "done"  # type: ignore[arg-type]
    assert sender.headers == [(("Content-Type", "text/plain"),)]


class Reading(Sender):
    """Answers the guard's read (a GET) with `status` and `body`, every step with `steps`; `bound` is the credential
    the pipeline would inject (None: none is configured for the host)."""

    def __init__(self, status: int, body: dict[str, Any] | None = None, bound: str | None = "aws",
                 steps: int = 204) -> None:
        super().__init__()
        self.status, self.body, self.bound, self.steps = status, body or {}, bound, steps

    def send(self, step: Step, agent: str, undo_of: str, request_id: str | None = None
             ) -> tuple[int, dict[str, Any], str | None]:
        self.sent.append((step.url, request_id))
        status = self.status if step.method == "GET" else self.steps
        return status, {"status": status, "headers": {}, "body": b"", "text": json.dumps(self.body) if self.body
                        else "", "json": self.body, "form": {}}, request_id

    def credential_for(self, step: Step) -> str | None:
        return self.bound


def _guarded(credential: str | None = "aws", refused: str | None = None) -> Plan:
    variables = frozenset({"read", "response", "request", "pre"})
    return Plan("ORIGINAL00001", "plan", steps=(Step("DELETE", "https://bucket.example/a", (), None, "why"),),
                guard=Step("GET", "https://bucket.example/a", (), None, ""),
                guard_expect=compile_condition("read.status == 404", variables),
                conflict="the object was written again after the agent's version", credential=credential,
                guard_refused=compile_condition(refused, variables) if refused else None)


@pytest.mark.parametrize(("status", "bound", "said"), [
    (403, None, "no credential is configured for bucket.example (the agent's request was sent with credential 'aws')"),
    (401, "aws", "the credential 'aws' configured for bucket.example was refused"),
])
def test_a_refused_guard_read_is_a_failure_that_says_so_not_a_conflict(
        journal: Journal, status: int, bound: str | None, said: str) -> None:
    sender = Reading(status, {"message": "Access Denied"}, bound)
    outcome = carry_out(_guarded(), sender, journal, "bot", False, lambda r: None)  # type: ignore[arg-type]
    assert outcome.state == "failed" and "written again" not in outcome.message
    assert f"the check GET https://bucket.example/a was refused by the upstream ({status}: " in outcome.message
    assert said in outcome.message and "nothing was changed" in outcome.message
    assert [url for url, _ in sender.sent] == ["https://bucket.example/a"]       # the read only, no step
    forced = carry_out(_guarded(), sender, journal, "bot", True, lambda r: None)  # type: ignore[arg-type]
    assert forced.state == "failed"                                             # --force overrides conflicts only


def test_a_guard_read_without_the_agents_credential_says_nothing_of_the_resource(journal: Journal) -> None:
    """Unauthenticated, an API may answer 404 for what exists (GitHub, for a private repository): the guard holds,
    yet nothing may be sent without the credential the agent's request had."""
    sender = Reading(404, bound=None)
    outcome = carry_out(_guarded(), sender, journal, "bot", False, lambda r: None)  # type: ignore[arg-type]
    assert outcome.state == "failed" and "answered 404, but went without a credential" in outcome.message
    assert "needs that credential" in outcome.message and len(sender.sent) == 1


def test_a_plan_without_a_guard_is_not_sent_without_the_credential(journal: Journal) -> None:
    plan = replace(_guarded(), guard=None, guard_expect=None)
    sender = Reading(404, bound=None)
    outcome = carry_out(plan, sender, journal, "bot", False, lambda r: None)  # type: ignore[arg-type]
    assert outcome.state == "failed" and "stopped before DELETE https://bucket.example/a" in outcome.message
    assert "it was not sent" in outcome.message and sender.sent == []
    public = carry_out(replace(plan, credential=None), sender, journal, "bot", False, lambda r: None)  # type: ignore[arg-type]
    assert public.state == "done"                                # the agent's request had none: none is needed


@pytest.mark.parametrize(("status", "body", "state", "said"), [
    (503, {}, "failed", "the check GET https://bucket.example/a failed upstream (503)"),
    (429, {}, "failed", "failed upstream (429)"),
    (200, {"ok": False, "error": "not_authed"}, "failed", "was refused by the upstream (200: "),   # the rule's `refused`
    (200, {"ok": False, "error": "message_not_found"}, "conflict", "written again after the agent's version"),
    (200, {"ok": True}, "conflict", "written again after the agent's version (read GET https://bucket.example/a "
                                    "answered 200)"),
    (404, {}, "done", "undone"),
])
def test_only_a_read_that_worked_can_show_a_conflict(
        journal: Journal, status: int, body: dict[str, Any], state: str, said: str) -> None:
    plan = _guarded(refused='read.json.ok == false && read.json.error in ["not_authed", "invalid_auth"]')
    outcome = carry_out(plan, Reading(status, body), journal, "bot", False, lambda r: None)  # type: ignore[arg-type]
    assert outcome.state == state and said in outcome.message, outcome.message


def test_a_step_refused_by_the_upstream_says_so(journal: Journal) -> None:
    step = Step("PUT", "https://x/a", (), b"old", "why")
    results: list[Any] = []
    outcome = carry_out(_plan(step), Reading(200, bound="aws", steps=403), journal, "bot", False, results.append)  # type: ignore[arg-type]
    assert outcome.state == "failed"
    assert results[0].detail == "refused by the upstream (403); the credential 'aws' configured for x was refused: " \
                                "it may lack the permission, or be out of date"


class Rewriter(Sender):
    """A pipeline that sends another request than the one it was given, and records what it sent."""

    def __init__(self, conn: Any, method: str, path: str) -> None:
        super().__init__()
        self.conn, self.method, self.path = conn, method, path

    def send(self, step: Step, agent: str, undo_of: str, request_id: str | None = None
             ) -> tuple[int, dict[str, Any], str | None]:
        assert request_id is not None
        _row(self.conn, request_id, 200)
        with self.conn:
            self.conn.execute("UPDATE requests SET method = ?, url = ? WHERE id = ?",
                              (self.method, f"https://x{self.path}", packed(request_id)))
        return super().send(step, agent, undo_of, request_id)


@pytest.mark.parametrize(("method", "path", "ok"), [("POST", "/first", True), ("POST", "/first/trash", False),
                                                    ("DELETE", "/first", False)])
def test_a_step_sent_as_another_request_than_planned_fails_and_the_report_names_what_went(
        journal: Journal, method: str, path: str, ok: bool) -> None:
    plan = _plan(_post("https://x/first"), _post("https://x/second"))
    results = run_steps(plan, Rewriter(journal.conn, method, path), journal, "bot", lambda r: None)  # type: ignore[arg-type]
    assert results[0].ok is ok and results[0].describe() == f"{method} https://x{path}"
    if not ok:
        assert len(results) == 1 and "instead of the planned POST https://x/first" in results[0].detail
        assert journal.states(plan.request_id) == {0: FAILED}
