"""`policy check` warns about a condition that nests one comprehension macro in another's body (its cost is the
product of the lists' lengths, on every request its rule matches), at the inner macro's place in the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from goex_proxy.policy.cel import nested_comprehension
from goex_proxy.undo.policycheck import check_file


@pytest.mark.parametrize("source", [
    "request.json.items.all(x, x.size() < 3)",
    "[1, 2].map(y, y * 2).all(z, z > 0)",  # chained after another, not inside it
    "[1].exists(x, x == 1) && [2].filter(y, y == 2).size() == 1",
    'request.path == "a.all(x, b.exists(y, y))"',  # in a string literal
    "has(request.json.a) && size(request.json.a) < 10",
])
def test_a_condition_without_a_comprehension_inside_another_is_not_flagged(source: str) -> None:
    assert nested_comprehension(source) is None


def test_a_comprehension_inside_anothers_body_is_found_where_it_is() -> None:
    found = nested_comprehension("request.json.a.all(x,\n  [1, (2)].exists(y, y == x))")
    assert found is not None and (found.outer, found.inner, found.line, found.col) == ("all", "exists", 2, 11)
    deep = nested_comprehension("l.filter(x, (x > 0) && m.map(y, [n.exists_one(z, z)]).size() > 0)")
    assert deep is not None and (deep.outer, deep.inner) == ("filter", "map")


def test_policy_check_warns_at_the_inner_macro_and_passes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text("""version: 1
name: slow
rules:
  - name: fine
    allow:
      host: slack.com
      when: 'request.json.items.all(x, x.size() < 3)'
  - name: nested
    deny:
      host: slack.com
      when: '[1, 2, 3].all(x, [1, 2].exists(y, x + y > 2))'
""")
    problems = check_file(path)
    assert [p.severity for p in problems] == ["warning"], problems
    [warning] = problems
    assert (warning.line, warning.col) == (11, 37)
    assert "'rules[1].deny.when' ('nested') nests .exists() in the body of .all()" in warning.message
    assert "every request the rule matches" in warning.message
