"""`undo`: a request's or a session's undo plans (undo.session) printed, confirmed and carried out with each step
said as it is sent; and `--propose`, a model's compensation (agent.proposeflow) shown and run once confirmed."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..audit import store as audit
from ..config import LLM, Config, load_config
from ..errors import GoexError, NotFound
from .common import config_option, handle_errors, json_option, outcome_of, parse_since, print_table

if TYPE_CHECKING:
    from ..agent.proposeflow import Asked
    from ..db.rowundo import RowPlan
    from ..sandbox.runs import Run
    from ..undo.run import Journal, Outcome, StepResult
    from ..undo.session import Planned


@click.command()
@config_option
@click.argument("request_id", required=False)
@click.option("--agent", help="Undo this agent's whole session (with --since), newest request first.")
@click.option("--since", help="With --agent: from then on, a duration (30m, 1h) or an ISO time.")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--yes", is_flag=True, help="Carry out the plan without asking.")
@click.option("--force", is_flag=True, help="Undo an undo, or carry on despite a conflict (clobbering a later change).")
@click.option("--propose", is_flag=True, help="For a request no rule can undo: ask the configured model (llm:) for "
              "compensating requests; they are checked, shown and run only when you confirm.")
@click.option("--save-rule", "save_rule", type=click.Path(path_type=Path), default=None,
              help="With --propose: once the proposal has run, save it as an undo rule pack FILE (a new file).")
@json_option
@handle_errors
def undo(config_path: Path | None, request_id: str | None, agent: str | None, since: str | None, dry_run: bool,
         yes: bool, force: bool, propose: bool, save_rule: Path | None, as_json: bool) -> None:
    """Take back what a recorded request (or an agent's session) did: print the plan, ask, then replay the
    compensating requests through the pipeline (policy re-checked, credentials injected, each audited as the undo).

    With --propose, a request no rule can undo is shown to the configured model (secrets scrubbed), whose proposed
    requests must stay on the request's origin and be allowed by policy; they are marked as proposed by a model and
    run only once you confirm. --save-rule FILE then keeps them as an undo rule for requests of the same kind.

    `goex-proxy undo catalog [--json]` prints the census instead: every mutating operation the vendors of the
    shipped packs document, the class its pack gives it, and each pack's share covered.

    Examples: goex-proxy undo 01JD3K2M5X0A1 --dry-run;  goex-proxy undo --agent mailbot --since 1h;
    goex-proxy undo 01JD3K2M5X0A1 --propose --save-rule undo-notes.yaml;  goex-proxy undo catalog
    """
    from ..undo import session
    from ..undo.run import Journal

    if request_id is not None and request_id.lower() == CATALOG:  # no request id is a word (Crockford base32)
        _catalog(agent, since, dry_run, yes, force, propose, save_rule, as_json)
        return
    request_id = request_id.upper() if request_id else request_id  # ids are case-free (Crockford base32)

    if save_rule is not None and not propose:
        raise click.UsageError("--save-rule goes with --propose")
    if propose and (request_id is None or agent is not None or since is not None):
        raise click.UsageError("--propose takes one REQUEST_ID (not a session)")
    if propose and force:
        raise click.UsageError("--force does not go with --propose")
    if propose:
        assert request_id is not None
        _propose_undo(load_config(config_path), request_id, save_rule, dry_run, yes, as_json)
        return
    if (request_id is None) == (agent is None) or (agent is not None) != (since is not None):
        raise click.UsageError("give a REQUEST_ID, or --agent NAME --since WHEN for a whole session")
    from ..db.record import SCHEME  # the gateway's rows: undone from their captured images, not by a rule

    config = load_config(config_path)
    conn = audit.connect(config)
    journal = Journal(conn)
    if agent is None:
        assert request_id is not None
        rows = [audit.get(conn, request_id)]
        if rows[0]["scheme"] == SCHEME:
            _undo_statement(config, conn, rows[0], dry_run, yes, force, as_json)
            return
    else:
        rows = session.session_rows(conn, agent, parse_since(since))
    statements = _plan_statements(config, conn, [r for r in rows if r["scheme"] == SCHEME], as_json)
    rows = [r for r in rows if r["scheme"] != SCHEME]
    planned = _show_plans(session.plan_rows(config, journal, rows, force), as_json)
    todo = [p for p in planned if p.passed_over is None]
    skipped = [p for p in planned if p.passed_over is not None]
    file_runs = session.file_runs(config, agent, parse_since(since)) if agent is not None else []
    _show_file_runs(file_runs, as_json)
    if request_id is not None:
        session.check_undoable(planned[0])
    if not todo and not file_runs and not statements:
        raise NotFound(f"nothing to undo for {agent} since {since}" + "".join(f"\n  {p.request_id}: {p.passed_over}"
                                                                         for p in skipped))
    if dry_run:
        return
    if not yes:
        if not sys.stdin.isatty():
            raise GoexError("undo asks before it acts: pass --yes to carry out the plan without a terminal")
        count = len(todo) + len(file_runs) + len(statements)
        click.confirm(f"carry out {'this plan' if count == 1 else f'these {count} plans'}?", abort=True)
    for row, statement in statements:  # newest first, each in a transaction of its own
        _carry_out_statement(config, row, statement)
    session.undo_file_runs(config, file_runs, force, lambda run: click.echo(f"file run {run.id}: {run.state}"))
    if todo:
        _carry_out(config, todo, skipped, journal, agent, force)


def _undo_statement(config: Config, conn: Any, row: dict[str, Any], dry_run: bool, yes: bool, force: bool,
                    as_json: bool) -> None:
    """`undo ID` of an SQL statement: its rows restored from their images, in one transaction upstream that first
    checks each is as the statement left it (exit 3 on a conflict, nothing changed)."""
    from ..db import rowundo

    if force:
        raise click.UsageError("--force does not go with the undo of an SQL statement (a changed row is never "
                               "overwritten)")
    the_plan = rowundo.plan_undo(config, conn, row)
    _print_statement_plan(row, the_plan, as_json)
    if dry_run:
        return
    if not yes:
        if not sys.stdin.isatty():
            raise GoexError("undo asks before it acts: pass --yes to carry out the plan without a terminal")
        click.confirm("carry out this plan?", abort=True)
    _carry_out_statement(config, row, the_plan)


def _plan_statements(config: Config, conn: Any, rows: list[dict[str, Any]],
                     as_json: bool) -> list[tuple[dict[str, Any], RowPlan]]:
    """A session's SQL statements that changed rows, newest first, each plan shown (or why it is passed over)."""
    from ..db import rowundo

    out = []
    for row in filter(rowundo.may_change_rows, rows):
        try:
            the_plan = rowundo.plan_undo(config, conn, row)
        except GoexError as exc:  # NotFound too
            click.echo(f"  not undone: {row['id']}: {str(exc).split(': ', 1)[-1]}", err=True)
            continue
        _print_statement_plan(row, the_plan, as_json)
        out.append((row, the_plan))
    return out


def _print_statement_plan(row: dict[str, Any], the_plan: RowPlan, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"request_id": the_plan.request_id, "verdict": "plan", "fidelity": "exact",
                               "table": the_plan.quoted, "rows": len(the_plan.rows), "steps": the_plan.describe()}))
    else:
        click.echo(f"undo {the_plan.request_id}: {row['method']} {row['url']} by {row['agent']} ({outcome_of(row)})")
        click.echo(f"  rows captured in the statement   fidelity: exact   table: {the_plan.quoted}")
        for i, step in enumerate(the_plan.describe(), start=1):
            click.echo(f"  step {i}: {step}")


def _carry_out_statement(config: Config, row: dict[str, Any], the_plan: RowPlan) -> None:
    """Restore the rows (holding the undo lock); exit 3 on a conflict, nothing changed."""
    from ..db import rowundo
    from ..undo.run import one_undo_at_a_time

    try:
        with one_undo_at_a_time(config.audit_db):
            tags = rowundo.carry_out(config, row, the_plan)
    except rowundo.Conflict as exc:
        click.echo(f"goex-proxy: {exc}", err=True)
        sys.exit(3)
    click.echo(f"undone {the_plan.request_id}: {', '.join(tags) or 'nothing to change'}")


#: `undo catalog`: the census of the shipped packs, in place of a REQUEST_ID.
CATALOG = "catalog"


def _catalog(agent: str | None, since: str | None, dry_run: bool, yes: bool, force: bool, propose: bool,
             save_rule: Path | None, as_json: bool) -> None:
    """`undo catalog`: each documented mutating operation of every shipped pack's vendor and the class the pack gives
    it (computed by planning a sample exchange of it), then each pack's share covered."""
    from ..undo import catalog

    if agent or since or dry_run or yes or force or propose or save_rule:
        raise click.UsageError("'undo catalog' takes only --json")
    rows = catalog.census(catalog.load_catalogs(catalog.catalog_files()))
    shares = catalog.shares(rows)
    if as_json:
        for r in rows:
            click.echo(json.dumps({"pack": r.pack, "operation": r.operation, "case": r.case or None,
                                   "class": r.fidelity, "covered": r.covered,
                                   "rule": r.rule, "reason": r.reason or None, "method": r.method, "url": r.url,
                                   "doc": r.doc}))
        for s in shares:
            click.echo(json.dumps({"pack": s.pack, "documented": s.documented, "covered": s.covered,
                                   "share": round(s.share, 4), "irreversible": s.irreversible,
                                   "not_covered": list(s.not_covered)}))
        return
    print_table(("pack", "operation", "class", "rule / why"),
                [(r.pack, r.label, r.fidelity, (r.rule or "-") + (f": {r.reason}" if r.reason else ""))
                 for r in rows],
                flexible=(1, 3), title="what undo can take back, per documented mutating operation")
    click.echo()
    print_table(("pack", "documented", "covered", "share", "irreversible", "not covered"),
                [(s.pack, str(s.documented), str(s.covered), s.percent, str(s.irreversible),
                  ", ".join(s.not_covered) or "-") for s in shares], flexible=5)


def undo_rows(config: Config, rows: list[dict[str, Any]]) -> None:
    """Undo these rows (`execute`'s), newest first, through the undo engine: each plan shown, then carried out (no
    more asking); exit 4 if any was passed over."""
    from ..undo import session
    from ..undo.run import Journal

    conn = audit.connect(config)
    journal = Journal(conn)
    planned = _show_plans(session.plan_rows(config, journal, session.newest_first(conn, rows), False), False)
    todo = [p for p in planned if p.passed_over is None]
    skipped = [p for p in planned if p.passed_over is not None]
    if todo:
        _carry_out(config, todo, skipped, journal, None, False)
    for p in skipped:
        click.echo(f"not undone: {p.request_id}: {p.passed_over}", err=True)
    if skipped:
        sys.exit(4)


def _show_plans(planning: Iterable[Planned], as_json: bool) -> list[Planned]:
    """Each plan printed as it is made; all of them."""
    planned = []
    for p in planning:
        _print_undo_plan(p, as_json)
        planned.append(p)
    return planned


def _show_file_runs(found: list[Run], as_json: bool) -> None:
    """A session's jailed runs whose file changes are to be taken back, each a line."""
    if not found:
        return
    from ..sandbox.runs import KEPT

    for run in found:
        verb = "restore" if run.state == KEPT else "discard (never applied)"
        if as_json:
            click.echo(json.dumps({"file_run": run.id, "state": run.state, "workspace": run.workspace,
                                   "paths": [c.path for c in run.changes]}))
        else:
            click.echo(f"file run {run.id} in {run.workspace}: {verb} {len(run.changes)} path(s)")


def _say_step(r: StepResult) -> None:
    """A step as it was sent and how it ended (on stderr if it failed)."""
    click.echo(f"  {'done' if r.ok else 'FAILED'}: {r.describe()} -> {r.status if r.status is not None else '-'}"
               + (f" ({r.request_id})" if r.request_id else "") + (f": {r.detail}" if r.detail and not r.ok else ""),
               err=not r.ok)


def _carry_out(config: Config, todo: list[Planned], skipped: list[Planned], journal: Journal, agent: str | None,
               force: bool) -> None:
    """Carry out the plans, each step and each plan's end said as it happens; for a session, then say what was and
    was not undone; exit 3 (a conflict) or 4 if one did not finish."""
    from ..undo import session

    def say_outcome(p: Planned, outcome: Outcome) -> None:
        if outcome.state == "done":
            click.echo(outcome.message)
        else:
            click.echo(f"{p.request_id}: {outcome.message}", err=True)

    carried = session.carry_out_all(config, todo, journal, force, _say_step, say_outcome)
    _report_session(carried.done, carried.left, skipped, agent)
    if carried.outcome is not None:
        sys.exit(3 if carried.outcome.state == "conflict" else 4)


def _print_undo_plan(planned: Planned, as_json: bool) -> None:
    """A request's undo plan: its rule, fidelity and guard, and each step with the journal's state of it."""
    row, the_plan, states = planned.row, planned.plan, planned.states
    if as_json:
        click.echo(json.dumps({"request_id": the_plan.request_id, "verdict": the_plan.verdict, "rule": the_plan.rule,
                               "fidelity": the_plan.fidelity, "reason": the_plan.reason,
                               "unguarded": the_plan.unguarded or None,
                               "guard": the_plan.guard.describe() if the_plan.guard else None,
                               "steps": [{"method": s.method, "url": s.url, "why": s.why,
                                          "state": states.get(i)} for i, s in enumerate(the_plan.steps)]}))
        return
    click.echo(f"undo {the_plan.request_id}: {row['method']} {row['url']} by {row['agent']} ({outcome_of(row)})")
    click.echo(f"  rule: {the_plan.rule or '-'}   fidelity: {the_plan.fidelity}"
               + (f"   ({the_plan.reason})" if the_plan.verdict != "plan" else ""))
    if the_plan.unguarded:
        click.echo(f"  unguarded: {the_plan.unguarded}")
    if the_plan.guard is not None:
        click.echo(f"  first checks: {the_plan.guard.describe()} (refused if {the_plan.conflict})")
    for i, step in enumerate(the_plan.steps, start=1):
        state = states.get(i - 1)
        click.echo(f"  step {i}: {step.describe()}" + (f"   [{state}]" if state else ""))
        if step.why:
            click.echo(f"          {step.why}")


def _report_session(done: Sequence[Planned], left: Sequence[Planned], skipped: Sequence[Planned],
                    agent: str | None) -> None:
    """What a session undo did and did not take back."""
    if agent is None:
        return
    click.echo(f"session of {agent}: {len(done)} undone" + "".join(f"\n  undone: {p.request_id}" for p in done))
    for p in left:
        click.echo(f"  not undone (not attempted): {p.request_id}", err=True)
    for p in skipped:
        click.echo(f"  not undone: {p.request_id}: {p.passed_over}", err=bool(left))


def _propose_undo(config: Config, request_id: str, save_rule: Path | None, dry_run: bool, yes: bool,
                  as_json: bool) -> None:
    """`undo ID --propose`: the model asked and its answer checked (agent.proposeflow), the proposal shown, and on
    confirmation run as an undo; each choice recorded with the model's call."""
    from ..agent import proposeflow

    def asking(row: dict[str, Any], model: LLM) -> None:
        if not as_json:
            click.echo(f"undo {row['id']}: {row['method']} {row['url']} by {row['agent']} ({outcome_of(row)})")
            click.echo(f"  no rule plans it; asking the model {model.model} at {model.base_url}")

    asked = proposeflow.ask(config, request_id, save_rule, asking)
    _print_proposal(asked, save_rule, as_json)
    if dry_run:
        asked.record("not run: --dry-run")
        return
    if not yes:
        if not sys.stdin.isatty():
            asked.record("declined: no terminal to confirm on, and no --yes")
            raise GoexError("undo asks before it acts: pass --yes to carry out the proposal without a terminal")
        if not click.confirm("carry out these steps, proposed by a model?"):
            asked.record("declined")
            click.echo("declined: nothing was run", err=True)
            sys.exit(1)
    outcome = proposeflow.carry_out_proposal(config, asked, _say_step)
    if outcome.state != "done":
        click.echo(f"{asked.request_id}: {outcome.message}" + ("; the rule was not saved" if save_rule is not None
                                                               else ""), err=True)
        sys.exit(3 if outcome.state == "conflict" else 4)
    click.echo(outcome.message)
    if save_rule is not None and asked.rule_text is not None:
        proposeflow.write_rule(save_rule, asked.rule_text)
        click.echo(f"saved the undo rule to {save_rule}: check it, then add it to undo_rules in {config.file}")


def _print_proposal(asked: Asked, save_rule: Path | None, as_json: bool) -> None:
    """The proposal, marked as a model's, each step with why, what it sends and the policy rule that allows it."""
    from ..agent.propose import describe_body

    the_plan, proposal, decisions, model = asked.plan, asked.proposal, asked.decisions, asked.model.model

    if as_json:
        click.echo(json.dumps({
            "request_id": the_plan.request_id, "verdict": "proposed", "proposed_by": model,
            "explanation": proposal.explanation, "save_rule": str(save_rule) if save_rule else None,
            "steps": [{"method": s.method, "url": s.url, "headers": dict(s.headers),
                       "body": (s.body or b"").decode("utf-8", "replace") or None, "why": s.why, "allowed_by": d.rule}
                      for s, d in zip(the_plan.steps, decisions, strict=True)]}))
        return
    click.echo(f"PROPOSED BY A MODEL ({model}) — not a rule; check it before you confirm")
    for i, (step, decision) in enumerate(zip(the_plan.steps, decisions, strict=True), start=1):
        click.echo(f"  step {i}: {step.describe()}")
        if step.why:
            click.echo(f"          {step.why}")
        for name, value in step.headers:
            click.echo(f"          {name}: {value}")
        if step.body:
            click.echo(f"          body: {describe_body(step)}")
        click.echo(f"          allowed by policy ({decision.rule or decision.reason})")
    if proposal.explanation:
        click.echo(f"  the model explains: {proposal.explanation}")
    if save_rule is not None:
        click.echo(f"  once done, it is saved as an undo rule to {save_rule}")
