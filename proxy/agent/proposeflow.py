"""`undo ID --propose` around the pure `propose`: ask the model (every call recorded), check its answer, and once the
person confirms, carry it out as an undo; what became of the proposal is recorded with the call.

Nothing is sent upstream before the person confirms, and nothing at all unless every check passed: the row is one no
rule plans, the model answered strict JSON, every step is well-formed, on the request's origin, free of credentials
and allowed by policy, and (with a rule to save) expressible as a rule that reproduces it. Every call to the model is
recorded in `model_calls` (failed ones with their error), then what became of it (`choice`: accepted, declined,
refused: why) and the audit ids of the compensations it made (`rows`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audit import store as audit
from ..audit.seal import Seal
from ..config import LLM, Config
from ..errors import GoexError
from ..policy.engine import Decision, PolicySet
from ..policy.limits import LimitCounters
from ..policy.load import load_policy_set
from ..undo.plan import Exchange, Plan, plan
from ..undo.rules import load_packs
from ..undo.run import Journal, Outcome, Replayer, StepResult, carry_out, one_undo_at_a_time
from . import llm, modellog
from . import propose as proposing


@dataclass(frozen=True)
class Asked:
    """A proposal for one request that passed every check, not yet run: the request's row, the model's answer and the
    plan it makes, the policy decision allowing each step, and the rule pack text to save (if one was asked for)."""

    conn: sqlite3.Connection
    seq: int  # the call's row in `model_calls`
    row: dict[str, Any]
    model: LLM
    policies: PolicySet
    proposal: proposing.Proposal
    plan: Plan
    decisions: list[Decision]
    rule_text: str | None

    @property
    def request_id(self) -> str:
        return str(self.row["id"])

    @property
    def agent(self) -> str:
        return str(self.row["agent"])

    def record(self, choice: str) -> None:
        """Record what became of the proposal (declined, not run, ...) with the call that made it."""
        modellog.update(self.conn, self.seq, choice=choice)


def ask(config: Config, request_id: str, save_rule: Path | None,
        asking: Callable[[dict[str, Any], LLM], None]) -> Asked:
    """Check that a model may be asked about the request (and that `save_rule`, if given, can be written as a new
    file), ask the configured model, and check its answer. `asking` hears the row and the model just before the
    question is sent. An answer that fails a check is recorded as refused, and the check's error raised."""
    conn = audit.connect(config)
    row = audit.get(conn, request_id)
    rid, agent = str(row["id"]), str(row["agent"])
    journal = Journal(conn)
    if save_rule is not None and save_rule.exists():
        raise GoexError(f"refusing to overwrite {save_rule}: --save-rule writes a new file")
    if save_rule is not None and not save_rule.absolute().parent.is_dir():
        raise GoexError(f"cannot save the rule to {save_rule}: its directory does not exist")
    if (edited := audit.edited(audit.chain_key(conn, Seal(config.state_dir)), row)) is not None:
        raise GoexError(f"cannot undo {rid}: its audit row does not hold: {edited}; `goex-proxy log verify` checks "
                        "the log")
    proposing.check_row(row, plan(rid, Exchange.from_row(row), load_packs(list(config.undo_packs))),
                        journal.states(rid))
    model = llm.configured(config)
    policies = load_policy_set(config.policy_sources)
    host = Exchange.from_row(row).target()[1]
    messages = proposing.prompt_for(row, llm.secret_scrubber(config),
                                    proposing.allowed_summaries(policies, agent, host),
                                    proposing.injected_headers(config, host))
    asking(row, model)
    try:
        reply = llm.ask(config, messages)
    except llm.LLMError as exc:
        modellog.record_call(conn, "propose", agent, rid, model, messages, error=str(exc))
        raise
    seq = modellog.record_call(conn, "propose", agent, rid, model, messages, reply=reply)
    try:
        proposal = proposing.parse_proposal(llm.json_in(reply), row, config.credentials.values())
        now = time.time()
        counts = LimitCounters()
        counts.seed(audit.load_limit_hits(conn, policies.limit_windows(), now))
        decisions = proposing.check_policy(proposal, agent, policies, counts, now)
        rule_text = (proposing.rule_yaml(row, proposal, save_rule.stem, model.model)
                     if save_rule is not None else None)
    except GoexError as exc:
        modellog.update(conn, seq, choice=f"refused: {exc}")
        raise
    return Asked(conn, seq, row, model, policies, proposal, proposal.plan(rid, row, model.model), decisions,
                 rule_text)


def carry_out_proposal(config: Config, asked: Asked, on_step: Callable[[StepResult], None]) -> Outcome:
    """Carry out an accepted proposal like any plan (journaled, through the pipeline, audited with `undo_of`), under
    the undo lock and only if no other undo of the request started while the person was asked; the acceptance and
    the audit ids of the compensations sent are recorded with the call. `on_step` hears each step sent."""
    journal = Journal(asked.conn)
    made: list[str] = []

    def report(r: StepResult) -> None:
        if r.request_id:
            made.append(r.request_id)
        on_step(r)

    with one_undo_at_a_time(config.audit_db):
        try:
            proposing.check_not_started(asked.request_id, journal.states(asked.request_id))
        except GoexError as exc:
            asked.record(f"refused: {exc}")
            raise
        asked.record("accepted")
        replayer = Replayer(config, asked.policies)
        try:
            outcome = carry_out(asked.plan, replayer, journal, asked.agent, False, report)
        finally:
            replayer.close()
    modellog.update(asked.conn, asked.seq, rows=made)
    return outcome


def write_rule(path: Path, text: str) -> None:
    """Save a done proposal's rule pack to `path`, a new file (never over one)."""
    try:
        with open(path, "x", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise GoexError(f"the undo was done, but the rule could not be saved to {path}: "
                        f"{exc.strerror or exc}") from None
