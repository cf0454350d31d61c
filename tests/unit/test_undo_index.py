"""The undo rules' index by host and method: a request is checked against only the rules that can match it, and
finds exactly the rules a scan of all of them finds, in pack order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from goex_proxy.globs import compile_host, compile_path
from goex_proxy.undo.plan import RuleIndex, UndoRule, rules_for

HOSTS = ["api.example.com", "slack.com", "Slack.com", "a.s3.amazonaws.com", "x.example.com", "127.0.0.1", ""]
HOST_GLOBS = ["api.example.com", "slack.com", "*.example.com", "**", "*.s3.amazonaws.com", "127.0.0.1"]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
PATHS = ["/", "/items", "/items/1", "/api/chat.delete", "/a/b/c"]
PATH_GLOBS = ["/items", "/items/*", "/**", "/api/*", "/a/**"]


@st.composite
def rules(draw: st.DrawFn) -> tuple[UndoRule, ...]:
    out = []
    for i in range(draw(st.integers(0, 12))):
        hosts = tuple(compile_host(h) for h in draw(st.lists(st.sampled_from(HOST_GLOBS), min_size=1, max_size=3)))
        methods = draw(st.none() | st.frozensets(st.sampled_from(METHODS), min_size=1, max_size=3))
        paths = draw(st.none() | st.lists(st.sampled_from(PATH_GLOBS), min_size=1, max_size=2).map(
            lambda ps: tuple(compile_path(p) for p in ps)))
        out.append(UndoRule("pack", f"rule {i}", hosts, methods, paths, "exact"))
    return tuple(out)


@settings(max_examples=300, deadline=None)
@given(packs=rules(), host=st.sampled_from(HOSTS), method=st.sampled_from(METHODS), path=st.sampled_from(PATHS))
def test_the_index_finds_what_a_linear_scan_finds(packs: tuple[UndoRule, ...], host: str, method: str,
                                                  path: str) -> None:
    scanned = [r for r in packs if r.matches(method, host, path)]
    for _ in range(2):  # the second time from the index's kept lists
        assert [r for r in rules_for(packs, host, method) if r.matches(method, host, path)] == scanned
        assert [r for r in rules_for(packs, host) if r.matches(method, host, path)] == scanned
    candidates = RuleIndex(packs).candidates(host, method)
    assert list(candidates) == [r for r in packs if r in candidates]  # pack order
    assert all(r.methods is None or method in r.methods for r in candidates)  # only rules of this method


def test_a_request_is_checked_only_against_its_methods_rules() -> None:
    post = UndoRule("p", "post", (compile_host("**"),), frozenset({"POST"}), None, "exact")
    put = UndoRule("p", "put", (compile_host("**"),), frozenset({"PUT", "PATCH"}), None, "exact")
    anything = UndoRule("p", "any", (compile_host("slack.com"),), None, None, "exact")
    packs = (post, put, anything)
    assert rules_for(packs, "slack.com", "PATCH") == (put, anything)
    assert rules_for(packs, "example.com", "POST") == (post,)
    assert rules_for(packs, "example.com", "DELETE") == ()
    assert list(rules_for(list(packs), "example.com", "DELETE")) == list(packs)  # not a tuple: no index, all rules
