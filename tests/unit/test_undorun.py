"""Resuming an interrupted undo from its journal and the audit rows of the steps it sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from goex_proxy import audit, ids
from goex_proxy.auditseal import Seal
from goex_proxy.cel import compile_condition
from goex_proxy.errors import GoexError
from goex_proxy.undoplan import Plan, Step
from goex_proxy.undorun import DONE, FAILED, SENT, Journal, carry_out, one_undo_at_a_time, run_steps


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
    with conn:
        conn.execute("INSERT INTO requests (id, ts, agent, method, scheme, host, port, path, url, decision, status, "
                     "resp_headers, resp_body, hash, prev_hash) VALUES (?, 0, 'bot', 'POST', 'https', 'x', 443, "
                     "'/a', 'https://x/a', 'allow', ?, ?, ?, 'h', '')",
                     (request_id, status, json.dumps([["Content-Type", "application/json"]]), body))


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
