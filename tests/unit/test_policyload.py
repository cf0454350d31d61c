"""Policy files: each failure mode in testdata/ yields exactly the `file:line:col: message` its first line expects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from goex_proxy.policy.engine import PolicySet, Routing
from goex_proxy.policy.load import check_policy_text, load_policy
from goex_proxy.presets import builtin_dir, builtin_names

DATA = Path(__file__).parent / "testdata"
CASES = sorted(DATA.glob("*.yaml"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_failure_mode_message(path: Path) -> None:
    """The checker reports the expected problem at the expected line and column."""
    text = path.read_text()
    expected = text.splitlines()[0].removeprefix("# expect: ")
    policy, problems = check_policy_text(text, str(path))
    assert policy is None
    assert f"{path}:{expected}" in [str(p) for p in problems]


def test_policy_check_cli_prints_every_problem_and_exits_1() -> None:
    """`goex-proxy policy check` prints each file's problem as file:line:col and exits 1."""
    r = subprocess.run([sys.executable, "-m", "goex_proxy", "policy", "check", *map(str, CASES)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    for path in CASES:
        expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
        assert f"{path}:{expected}" in r.stdout


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    """Two mistakes in one file give two messages."""
    text = "version: 1\nrules:\n  - name: a\n    allow: {host: x.example, bogus: 1}\n  - name: b\n    deny: {methods: [NOPE]}\n"
    _, problems = check_policy_text(text, "two.yaml")
    assert [f"{p.line}:{p.col}" for p in problems] == ["4:30", "6:21"]


@pytest.mark.parametrize("name", builtin_names())
def test_shipped_presets_are_valid(name: str) -> None:
    """Every preset under policies/ loads without problems."""
    policy = load_policy(builtin_dir() / f"{name}.yaml")
    assert policy.name == name and policy.rules


def test_presets_include_the_promised_ones() -> None:
    """gmail-readonly, slack-post-only, github-readonly and s3-readonly ship."""
    assert {"gmail-readonly", "slack-post-only", "github-readonly", "s3-readonly"} <= set(builtin_names())


def test_non_utf8_policy_is_a_located_problem(tmp_path: Path) -> None:
    """A policy file that is not UTF-8 is reported as a problem, not a traceback."""
    from goex_proxy.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"version: 1\nname: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_policy(bad)
    r = subprocess.run([sys.executable, "-m", "goex_proxy", "policy", "check", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and f"{bad}:1:1: policy file is not UTF-8 text" in r.stdout


def test_self_referencing_alias_is_a_problem() -> None:
    """A YAML alias that refers to itself is reported, not a crash."""
    _, problems = check_policy_text("version: 1\nrules: &a [*a]\n", "loop.yaml")
    assert problems and "invalid YAML" in str(problems[0])


@pytest.mark.parametrize(("match", "expected"), [
    ("{host: db.test, protocol: tcp, path: /x}", "'rules[0].allow.path': a raw TCP stream has no method, path or body"),
    ("{host: db.test, protocol: tcp, when: 'true'}", "'rules[0].allow.when': a raw TCP stream has no method"),
    ("{host: db.test, protocol: websocket}", "websocket is HTTP that goex-proxy inspects"),
    ("{host: db.test, protocol: 'no good'}", "must be 'tcp' or an HTTP Upgrade token"),
    ("{host: db.test, protocol: tcp, ports: [0]}", "'rules[0].allow.ports' must be a port number or a list"),
    ("{host: db.test, protocol: tcp, ports: '22'}", "'rules[0].allow.ports' must be a port number or a list"),
])
def test_protocol_rules_are_checked(match: str, expected: str) -> None:
    policy, problems = check_policy_text(f"version: 1\nrules:\n  - name: r\n    allow: {match}\n", "p.yaml")
    assert policy is None
    assert any(expected in p.message for p in problems), [str(p) for p in problems]


def test_a_protocol_rule_loads() -> None:
    policy, problems = check_policy_text("version: 1\nrules:\n  - name: r\n    allow: {host: db.test, protocol: TCP, "
                                         "ports: 5432}\n", "p.yaml")
    assert problems == [] and policy is not None
    rule = policy.rules[0]
    assert (rule.protocol, rule.ports) == ("tcp", frozenset({5432}))
    assert rule.summary() == "raw TCP to db.test port 5432 ('r')"


@pytest.mark.parametrize(("text", "expected"), [
    ("rules:\n  - name: r\n    deny: {host: x.test, path: /a, duplicate_keys: accept}\n",
     "unknown key 'duplicate_keys' in 'rules[0].deny'"),
    ("rules:\n  - name: r\n    allow: {host: x.test, path_case: insensitive}\n",
     "'rules[0].allow.path_case' applies to the rule's 'path', which it does not have"),
    ("rules:\n  - name: r\n    allow: {host: x.test, protocol: tcp, trailing_slash: optional}\n",
     "'rules[0].allow.trailing_slash': a raw TCP stream has no method, path or body"),
    ("servers: [slack.com]\nrules: []\n", "'servers' must be a mapping (got a list)"),
    ("servers:\n  'slack.com/api': {path_case: insensitive}\nrules: []\n", "'servers' key 'slack.com/api' must be a host"),
    ("servers:\n  slack.com: {}\nrules: []\n", "'servers.slack.com' must declare 'path_case', 'trailing_slash' or both"),
    ("servers:\n  slack.com: {paths: case-insensitive}\nrules: []\n", "unknown key 'paths' in 'servers.slack.com'"),
])
def test_routing_and_duplicate_keys_are_checked(text: str, expected: str) -> None:
    policy, problems = check_policy_text("version: 1\n" + text, "p.yaml")
    assert policy is None
    assert any(expected in p.message for p in problems), [str(p) for p in problems]


def test_routing_and_duplicate_keys_load() -> None:
    """The rule keys land on the rule, and `servers:` on the policy, as host globs with how they route paths."""
    policy, problems = check_policy_text("""version: 1
servers:
  "*.slack.com": {path_case: insensitive}
  slack.com: {path_case: insensitive, trailing_slash: optional}
rules:
  - name: batch
    allow: {host: api.example.com, path: /v1/items, duplicate_keys: accept, trailing_slash: optional}
  - name: plain
    allow: {host: api.example.com, path: /v1/other}
""", "p.yaml")
    assert problems == [] and policy is not None
    batch, plain = policy.rules
    assert (batch.accepts_duplicate_keys, batch.routing) == (True, Routing(fold_case=False, optional_slash=True))
    assert (plain.accepts_duplicate_keys, plain.routing) == (False, Routing())
    assert [(glob.pattern, routing) for glob, routing in policy.servers] == [
        ("*.slack.com", Routing(fold_case=True)), ("slack.com", Routing(fold_case=True, optional_slash=True))]
    assert PolicySet.of([policy]).routing("files.slack.com") == Routing(fold_case=True)
    assert PolicySet.of([policy]).routing("example.com") == Routing()
