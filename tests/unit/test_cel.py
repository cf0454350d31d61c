"""CEL conditions: compile errors are located, and pruning the context to the paths read never changes a result."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goex_proxy.policy.cel import CelEvalError, CelSyntaxError, compile_condition
from goex_proxy.policy.requestview import RequestView

EXPRESSIONS = [
    'request.json.channel == "C0BOTS"',
    "has(request.json.channel)",
    "has(request.json.a) && has(request.json.a.b) && request.json.a.b == 1",
    "size(request.json) > 1",
    'request.json.a.c.exists(x, x == 2)',
    'request.headers["x-team"] == "blue"',
    '"x-team" in request.headers && request.headers["x-team"].startsWith("b")',
    "'x-team' in request.headers || size(request.headers) > 3",
    'request.json["a"].b == 1 || "count" in request.json',
    '"c" in request.json.a',
    '"x-" + "team" in request.headers',
    '"""x-team""" in request.headers',
    "!('x-team' in request.headers) || ('accept' in request.headers && \"count\" in request.json)",
    '"a" + "" in request.json',
    'request.query.q.startsWith("cat")',
    'request["json"].channel == "C0BOTS"',
    'request.method == "POST" && agent == "bot" && now > 0',
    "request.json.count > 3",
]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["C0BOTS", "x", "cat"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["a", "b", "c", "channel", "count"]), inner, max_size=4)), max_leaves=8)
bodies = st.dictionaries(st.sampled_from(["a", "channel", "count", "other"]), json_values, max_size=4)


def outcome(expression: str, context: dict) -> object:
    try:
        return compile_condition(expression).evaluate(context)
    except CelEvalError:
        return "error"


@settings(max_examples=150, deadline=None)
@given(body=bodies, expression=st.sampled_from(EXPRESSIONS), team=st.sampled_from([None, "blue", "red"]))
def test_pruned_context_gives_the_same_result(body: dict, expression: str, team: str | None) -> None:
    """Evaluating on only the paths an expression reads gives what evaluating on the whole request gives."""
    headers = ((("x-team", team),) if team else ()) + (("accept", "*/*"),)
    view = RequestView("bot", "POST", "https", "h.example", 443, "/", (("q", "cats"),), headers, json.dumps(body).encode())
    condition = compile_condition(expression)
    assert outcome(expression, view.cel_context(1.0, condition.paths)) == outcome(expression, view.cel_context(1.0))


@pytest.mark.parametrize(("source", "line", "col"), [("a ==", 1, 5), ("request.json.(", 1, 14), ("x &&\n  (", 2, 4)])
def test_syntax_errors_are_located(source: str, line: int, col: int) -> None:
    """A syntax error says where in the expression it is."""
    with pytest.raises(CelSyntaxError) as err:
        compile_condition(source)
    assert (err.value.line, err.value.col) == (line, col) and "Syntax error" in str(err.value)


def test_non_boolean_result_is_an_error() -> None:
    """A condition must give a boolean; anything else is an evaluation error, never truthiness."""
    with pytest.raises(CelEvalError, match="not a boolean"):
        compile_condition("request.path").evaluate({"request": {"path": "/x"}})


# `matches` calls run through a cache of the engine's own answers (the engine compiles the regex at every call).
PATTERNS = ["^a", "b$", "(^|[.])s3[.-].*amazonaws[.]com$", "/(send|run)$|:[A-Za-z]+$", "\\d+", "^$", "[[:alpha:]]x",
            "(?i)ABC", "\\w\\s\\w"]


def _native(text: str, pattern: str) -> object:
    """What the engine's own `matches` says, or the exception it raises."""
    from goex_proxy.policy.cel import _engine

    try:
        return _engine().compile("s.matches(p)").execute({"s": text, "p": pattern})
    except Exception:
        return CelEvalError


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab.s3-amazonwsc:/runAB 1٣x", max_size=20), pattern=st.sampled_from(PATTERNS))
def test_matches_gives_the_engines_own_answer(text: str, pattern: str) -> None:
    method = compile_condition(f"request.host.matches({json.dumps(pattern)})")
    function = compile_condition(f"matches(request.host, {json.dumps(pattern)})")
    for condition in (method, function):
        assert condition.program is not None and condition.functions  # compiled to the cached form
        for _ in range(2):  # the second answer comes from the cache
            try:
                got: object = condition.evaluate({"request": {"host": text}})
            except CelEvalError:
                got = CelEvalError
            assert got == _native(text, pattern)


def test_matches_in_a_string_literal_is_text_not_a_call() -> None:
    condition = compile_condition('request.host == "x.matches(y)" || request.path.matches("^/a")')
    assert condition.evaluate({"request": {"host": "x.matches(y)", "path": "/b"}}) is True
    assert condition.evaluate({"request": {"host": "z", "path": "/a"}}) is True
    assert condition.evaluate({"request": {"host": "z", "path": "/b"}}) is False
    assert compile_condition('request.host == "matches(x)"').functions is None  # no call: compiled as written


def test_matches_failures_are_one_line_and_name_matches() -> None:
    with pytest.raises(CelEvalError) as bad_regex:
        compile_condition('request.host.matches("[")').evaluate({"request": {"host": "a"}})
    with pytest.raises(CelEvalError) as not_a_string:
        compile_condition('request.port.matches("1")').evaluate({"request": {"port": 1}})
    for error in (bad_regex.value, not_a_string.value):
        assert "\n" not in str(error) and "matches" in str(error) and "goex_matches" not in str(error)
    assert "not a valid regex" in str(bad_regex.value)


def test_matches_on_a_long_string_is_answered_without_being_remembered() -> None:
    condition = compile_condition('request.path.matches("x$")')
    assert condition.evaluate({"request": {"path": "a" * 5000 + "x"}}) is True
    assert condition.evaluate({"request": {"path": "a" * 5000 + "y"}}) is False


def test_a_lone_surrogate_anywhere_in_the_variables_reads_as_u_fffd() -> None:
    """A header byte that was not UTF-8 (surrogateescape) or JSON's `"\\udc80"`, in a value, a key, or deep in a
    list, made `bind` raise (ValueError: the engine takes only Unicode text); each reads as U+FFFD, the rest as it
    was, and what was handed in is left as it was."""
    from goex_proxy.policy.cel import bind, compile_condition

    nested: list[Any] = ["\udc80"]
    for _ in range(2000):  # deeper than a recursion would go
        nested = [nested]
    variables = {"response": {"json": {"k\udcff": "a\udc80b", "list": ("x", {"y": "\ud800"}), "n": 7, "pair": "\U0001f600",
                                       "deep": nested},
                              "headers": {"x-raw": "\udcff"}}}
    context = bind(variables)
    condition = compile_condition('response.json["k\\ufffd"] == "a\\ufffdb" && response.json.list[1].y == "\\ufffd" && '
                                  'response.json.n == 7 && response.json.pair == "\\U0001f600" && '
                                  'response.headers["x-raw"] == "\\ufffd"', frozenset({"response"}))
    assert condition.evaluate(context) is True
    assert variables["response"]["json"]["k\udcff"] == "a\udc80b"
