"""Undo expressions are handed only the fields they read (a `Scope` binds per set of paths): every plan and class
of the census's documented operations, and of REST exchanges, is the same as with every variable handed over."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from goex_proxy.policy import cel
from goex_proxy.undo import catalog
from goex_proxy.undo.plan import Exchange, Scope, classify, find_rule, plan_rule
from goex_proxy.undo.rules import load_packs

OPERATIONS = catalog.load_catalogs(catalog.catalog_files())
RULES = tuple(load_packs([catalog.pack_path(n) for n in ("gmail", "github", "s3", "slack", "rest")]))
ITEM = json.dumps({"id": 7, "name": "widget", "etag": "v1"}).encode()
JSON = (("Content-Type", "application/json"),)
REST = [
    Exchange("POST", "https://api.example.com/items", JSON, ITEM, 201, (*JSON, ("Location", "/items/7")), ITEM),
    Exchange("POST", "https://api.example.com/items", JSON, ITEM, 200, JSON, ITEM),
    Exchange("PUT", "https://api.example.com/items/7", JSON, ITEM, 200, (*JSON, ("ETag", '"v2"')), ITEM, 200, JSON,
             ITEM),
    Exchange("PATCH", "https://api.example.com/items/7", JSON, b'{"name": "x"}', 200, JSON, b"", 200,
             (("Content-Type", "text/plain"),), b"plain"),
    Exchange("DELETE", "https://api.example.com/items/7", (), None, 204, (), None, 200, JSON, ITEM),
    Exchange("PUT", "https://api.example.com/items/8", JSON, ITEM, 201, JSON, ITEM, 404, JSON, b"{}"),
]


class _Everything(Scope):
    """A Scope that binds every variable whatever an expression reads (as before pruning)."""

    def bound(self, paths: Any = None) -> Any:
        return super().bound(None)


def _everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make Exchange.variables() and the guard's probe context hand every variable over, as before."""
    original = Exchange.variables
    monkeypatch.setattr(Exchange, "variables", lambda self, *fields: _Everything(original(self)))  # every field
    monkeypatch.setattr("goex_proxy.undo.plan.pruned", lambda variables, paths: dict(variables))


def _step(step: Any) -> Any:
    """A step as compared: a JSON body parsed (the engine's maps have no order, so neither has their JSON text)."""
    if step is None:
        return None
    try:
        body: Any = json.loads(step.body) if step.body else step.body
    except ValueError:
        body = step.body
    return (step.method, step.url, step.headers, body, step.why, step.repeatable)


def _outcome(exchange: Exchange) -> tuple[Any, ...]:
    found = find_rule(RULES, exchange)
    if found is None:
        return ("no rule", classify(RULES, exchange))
    rule, variables = found
    p = plan_rule("r", exchange, rule, variables)
    return (rule.name, p.verdict, p.fidelity, p.reason, [_step(s) for s in p.steps], _step(p.guard), p.unguarded,
            classify(RULES, exchange))


CASES = [op.exchange for op in OPERATIONS] + REST + [replace(e, status=None) for e in REST]


@pytest.mark.parametrize("exchange", CASES, ids=[f"{e.method} {e.url} {e.status}" for e in CASES])
def test_pruned_variables_plan_and_classify_as_all_of_them(exchange: Exchange, monkeypatch: pytest.MonkeyPatch) -> None:
    pruned = _outcome(exchange)
    with monkeypatch.context() as m:
        _everything(m)
        assert _outcome(exchange) == pruned


def test_a_condition_on_the_host_never_has_the_body_converted() -> None:
    bound: list[dict[str, Any]] = []
    real = cel.bind

    def spy(variables: dict[str, Any]) -> Any:
        bound.append(variables)
        return real(variables)

    scope = Scope({"request": {"host": "a.example", "body": b"x" * 1000, "json": {"big": "y" * 1000}}})
    condition = cel.compile_condition('request.host == "a.example"', frozenset({"request"}))
    import goex_proxy.undo.plan as plan_module

    plan_module.bind, saved = spy, plan_module.bind  # type: ignore[assignment]
    try:
        assert condition.evaluate(scope.bound(condition.paths)) is True
        assert condition.evaluate(scope.bound(condition.paths)) is True  # kept: bound once
    finally:
        plan_module.bind = saved  # type: ignore[assignment]
    assert bound == [{"request": {"host": "a.example"}}]


def test_a_request_body_no_rule_reads_is_neither_decoded_nor_parsed() -> None:
    from goex_proxy.undo.plan import BODY_FIELDS, request_body_fields, rules_for

    post, put = replace(REST[0]), replace(REST[2])  # fresh: no request variables kept from another test
    found = find_rule(RULES, post)
    assert found is not None and found[0].pack == "rest"
    request = found[1]["request"]
    assert request["body"] == ITEM and "text" not in request and "json" not in request  # no POST rule reads them
    assert found[1]["response"]["json"] == json.loads(ITEM)  # the response is read whole (the guard's probes)
    put_found = find_rule(RULES, put)
    assert put_found is not None and put_found[1]["request"]["body"] == ITEM  # the PUT rules' guard compares it
    assert request_body_fields(rules_for(RULES, "api.example.com", "POST")) < BODY_FIELDS
    assert post.variables()["request"]["json"] == json.loads(ITEM)  # asked for everything, as before
