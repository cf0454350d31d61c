"""The policy index (by host, then by path segment) decides exactly as a scan of every rule on the host does; the
globs' segment matcher matches as their expressions do; YAML read by libyaml is what the pure-Python loader reads."""

from __future__ import annotations

import re
import string
import sys
from pathlib import Path

import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goex_proxy import yamlsrc
from goex_proxy.globs import compile_host, compile_path
from goex_proxy.policy.cel import compile_condition
from goex_proxy.policy.engine import _FOLDS_TO_ASCII, Limit, Policy, PolicySet, Routing, Rule, decide
from goex_proxy.policy.limits import LimitCounters
from goex_proxy.policy.requestview import RequestView

REPO = Path(__file__).resolve().parents[2]

HOSTS = ["api.example.com", "x.example.com", "example.org", "a.b.example.com"]
HOST_GLOBS = HOSTS + ["*.example.com", "**.example.com", "**", "example.*", "{api,x}.example.com"]
#: Segments the generated paths and globs are made of: cases, a format suffix, characters folding to ASCII.
SEGMENTS = ["v1", "V1", "items", "Items", "admin", "ADMIN", "a", "b", "delete", "delete.json", "x.xml", "",
            "\u212aey", "key", "\u0131d", "id", "\u00e9t\u00e9"]
GLOB_SEGMENTS = [s for s in SEGMENTS if s] + ["*", "**", "?", "it*", "{a,b}", "{items,admin}", "*.json", "a**"]
CONDITIONS = [None, None, None, compile_condition('request.query.x == "1"'), compile_condition('request.path.startsWith("/v1")'),
              compile_condition("request.json.missing.deeper == 1")]

paths = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map(lambda s: "/" + "/".join(s))
globs = st.one_of(
    st.lists(st.sampled_from(GLOB_SEGMENTS), min_size=1, max_size=4).map(lambda s: "/" + "/".join(s)),
    st.sampled_from(["/", "/**", "/v1/**", "/**/admin/**", "/v1/{a/b,items}", "/v1/", "/v1/*/"]))


@st.composite
def rules(draw: st.DrawFn, policy: str, index: int) -> Rule:
    effect = draw(st.sampled_from(["allow", "allow", "deny"]))
    limit = draw(st.sampled_from([None, None, Limit(0, None, ""), Limit(5, 60.0, "1m")])) if effect == "allow" else None
    return Rule(
        policy=policy, name=f"r{index}", effect=effect,
        hosts=tuple(compile_host(h) for h in draw(st.lists(st.sampled_from(HOST_GLOBS), min_size=effect == "allow",
                                                            max_size=2))),
        methods=draw(st.sampled_from([None, frozenset({"GET"}), frozenset({"POST", "DELETE"})])),
        paths=draw(st.one_of(st.none(), st.lists(globs, min_size=1, max_size=2).map(
            lambda ps: tuple(compile_path(p) for p in ps)))),
        agents=draw(st.sampled_from([None, None, frozenset({"bot"})])),
        when=draw(st.sampled_from(CONDITIONS)),
        limit=limit,
        reason=f"reason {index}" if effect == "deny" and draw(st.booleans()) else None,
        routing=draw(st.sampled_from([Routing(), Routing(), Routing(True, False), Routing(False, True)])),
        accepts_duplicate_keys=draw(st.booleans()),
    )


@st.composite
def policy_sets(draw: st.DrawFn) -> list[Policy]:
    out = []
    for p in range(draw(st.integers(1, 3))):
        name = f"p{p}"
        out.append(Policy(
            name=name, file=f"{name}.yaml",
            rules=tuple(draw(rules(name, i)) for i in range(draw(st.integers(0, 12)))),
            agents=draw(st.sampled_from([None, None, frozenset({"bot"}), frozenset({"other"})])),
            mode=draw(st.sampled_from(["enforce", "enforce", "report"])),
            servers=tuple((compile_host(h), Routing(True, True)) for h in draw(st.lists(st.sampled_from(HOST_GLOBS),
                                                                                         max_size=1))),
        ))
    return out


@st.composite
def views(draw: st.DrawFn) -> RequestView:
    query = draw(st.sampled_from([(), (("x", "1"),), (("x", "1"), ("x", "2")), (("y", "1"), ("y", "1"))]))
    tcp = draw(st.integers(0, 20)) == 0
    return RequestView(draw(st.sampled_from(["bot", "other"])), "" if tcp else draw(st.sampled_from(
        ["GET", "POST", "DELETE"])), "https", draw(st.sampled_from(HOSTS + ["elsewhere.net"])), 443,
        "" if tcp else draw(paths), () if tcp else query, (), b"", "tcp" if tcp else "http")


def counters() -> LimitCounters:
    c = LimitCounters()
    c.seed(("p0/r1", "bot", 1000.0 - i) for i in range(6))
    return c


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(policy_sets(), st.lists(views(), min_size=1, max_size=8))
def test_the_index_decides_every_request_as_a_scan_of_every_rule_does(policies: list[Policy],
                                                                       requests: list[RequestView]) -> None:
    """Same effect, rule, reason, report, limits, alternatives and wait: the index only leaves out rules that could not
    match, and keeps the scan's order (first deny, first allow, first error)."""
    indexed, linear = PolicySet.of(policies), PolicySet.of(policies, indexed=False)
    for view in requests:
        assert decide(view, indexed, 1000.0, counters()) == decide(view, linear, 1000.0, counters()), view


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.sampled_from(HOST_GLOBS[:2] + ["**"]), st.one_of(st.none(), st.lists(globs, min_size=1,
                                                                                                  max_size=2))),
                min_size=1, max_size=30),
       st.lists(paths, min_size=1, max_size=10))
def test_the_index_leaves_out_no_rule_that_matches_a_path_in_any_reading(specs: list[tuple[str, list[str] | None]],
                                                                         requests: list[str]) -> None:
    """Every rule whose path matches as written, in any case, with or without a trailing slash, or without a format
    suffix, is among the path index's candidates, in the scan's order."""
    from goex_proxy.policy.engine import EXACT, LENIENT, _without_format

    rules = tuple(Rule("p", f"r{i}", "deny", (compile_host(h),), None,
                       None if ps is None else tuple(compile_path(p) for p in ps)) for i, (h, ps) in enumerate(specs))
    policies = PolicySet.of([Policy("p", "p.yaml", rules)])
    readings = [EXACT, LENIENT, Routing(True, False), Routing(False, True)]
    for path in requests:
        view = RequestView("bot", "GET", "https", "api.example.com", 443, path)
        formatless = _without_format(view)
        seen = [view] if formatless is None else [view, formatless]
        found = policies.path_candidates(view.host, [v.path for v in seen])
        everything = policies.candidates(view.host)
        assert found == [c for c in everything if c in found], "not in the scan's order"
        for c in everything:
            if any(c.rule.matches_plain(v, c.host_known, how) for v in seen for how in readings):
                assert c in found, (c.rule.paths, path)


def test_a_host_with_thousands_of_rules_finds_the_right_one_in_order() -> None:
    """The first matching rule of thousands on one host decides, as the scan would; a deny later in the file still
    beats an allow; alternatives are the first few allow rules of the host."""
    def rule(i: int, effect: str, path: str, methods: frozenset[str] | None = None) -> Rule:
        return Rule("big", f"r{i}", effect, (compile_host("api.example.com"),), methods, (compile_path(path),))
    rules = [rule(i, "allow", f"/v1/res{i}/**", frozenset({"GET"})) for i in range(3000)]
    rules += [rule(3000, "deny", "/v1/res2999/*/admin"), rule(3001, "allow", "/v1/*/items")]
    sets = [PolicySet.of([Policy("big", "big.yaml", tuple(rules))], indexed=b) for b in (True, False)]
    for path, method in [("/v1/res2999/x/admin", "GET"), ("/v1/res7/a", "GET"), ("/v1/res7/items", "POST"),
                         ("/v1/nothing/x", "GET"), ("/V1/RES5/A", "GET")]:
        view = RequestView("bot", method, "https", "api.example.com", 443, path)
        a, b = (decide(view, s, 0.0, LimitCounters()) for s in sets)
        assert a == b
    deny = decide(RequestView("bot", "GET", "https", "api.example.com", 443, "/v1/res2999/x/admin"), sets[0], 0.0,
                  LimitCounters())
    assert deny.effect == "deny" and deny.rule == "big/r3000" and len(deny.allowed_instead) == 5
    assert deny.allowed_instead[0].startswith("GET api.example.com/v1/res0/**")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(GLOB_SEGMENTS + ["x\ny"]), min_size=1, max_size=4),
       st.lists(st.sampled_from(SEGMENTS + ["x\ny", "ITEMS"]), min_size=1, max_size=5), st.booleans(), st.booleans())
def test_a_glob_matched_segment_by_segment_matches_as_its_expression_does(glob_segments: list[str],
                                                                         path_segments: list[str], fold: bool,
                                                                         slash: bool) -> None:
    glob = compile_path("/" + "/".join(glob_segments))
    path = "/" + "/".join(path_segments)
    if not (fold or slash):
        assert glob.matches(path) == (glob.regex.fullmatch(path) is not None)
        return
    spelled = path.removesuffix("/") + "/" if slash and len(path) > 1 else path
    assert glob.matches_path(path, fold, slash) == (glob._lenient(fold, slash).fullmatch(spelled) is not None)


def test_every_character_matching_an_ascii_letter_in_any_case_is_folded_by_the_index() -> None:
    """Python's `re` and RE2, ignoring case, read four characters outside ASCII as ASCII letters; the path index
    files a request's segment under the same key as the letters, or a rule could be left out."""
    everything = "".join(chr(c) for c in range(0x80, sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
    letters = "|".join(string.ascii_lowercase)
    found = set(re.findall(f"(?i:{letters})", everything)) | set(re2.findall(f"(?i)(?:{letters})", everything))
    assert found == {chr(c) for c in _FOLDS_TO_ASCII}


def test_libyaml_reads_every_yaml_file_of_the_project_as_the_pure_python_loader_does(monkeypatch) -> None:
    """Values, positions and problems alike; a document libyaml refuses is read again by the pure-Python loader, so
    its problem is worded the same way."""
    def shape(x: object) -> object:
        if isinstance(x, yamlsrc.YMap):
            return ("map", x.pos, x.key_pos, x.value_pos, {k: shape(v) for k, v in x.items()})
        if isinstance(x, yamlsrc.YList):
            return ("list", x.pos, x.item_pos, [shape(v) for v in x])
        return (type(x).__name__, x)
    files = sorted({*REPO.glob("policies/**/*.yaml"), *REPO.glob("tests/**/*.yaml"), REPO / "config.example.yaml"})
    texts = [f.read_text(encoding="utf-8") for f in files] + [
        "a: 1\na: 2\n", "x: !!int nope\n", "- &a [*a]\n", "a: [1, 2\n", "k: \x00\n", "<<: {a: 1}\nb: !!binary aGk=\n",
        "t: 2024-01-01\nf: 1.5\nn: ~\nb: yes\n", "", "# only a comment\n", "s: 'it''s'\nd: \"\\u00e9\\t\"\n",
        "1: a\ntrue: b\n~: c\n: d\n", "a:\nb: |\n  x\n  y\nc: >\n  p\n  q\n", "? [a, b]\n: c\n", "---\na\n---\nb\n",
        "x: !foo bar\n", "x: !!str 1\n", "&a x\n", "a: &x {b: 1}\nc: *x\n", "a: {b: [1, {c: d}], e: []}\n- x\n",
        "rules:\n  - {name: \"r\", allow: {host: h, paths: [\"/a/**\", \"/b\"]}}\n  - name: s\n    deny: {host: h}\n",
        "~\n", "[1, 2.5, 0x1f, .inf, null, '', \"\"]\n", "a: =\n", "=: a\n", "é: ü\n  # indented comment\n"]
    assert len(texts) > 20
    for text in texts:
        fast = yamlsrc.load(text, "f.yaml")
        monkeypatch.setattr(yamlsrc, "_FAST_LOADER", None)
        slow = yamlsrc.load(text, "f.yaml")
        monkeypatch.undo()
        assert shape(fast[0]) == shape(slow[0]) and fast[1] == slow[1], text[:200]
