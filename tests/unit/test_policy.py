"""The pure policy engine: tables keyed by the sentence they prove, asserting reasons; hypothesis for invariants."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goex_proxy.policy.engine import PolicySet, decide
from goex_proxy.policy.limits import LimitCounters
from goex_proxy.policy.load import check_policy_text
from goex_proxy.policy.requestview import RequestView

SLACK = """
version: 1
name: slack
agents: [bot]
rules:
  - name: read channels
    allow: {host: slack.com, methods: [GET, POST], path: "/api/conversations.{list,history}"}
  - name: post to bots
    allow:
      host: slack.com
      methods: [POST]
      path: /api/chat.postMessage
      when: 'request.json.channel == "C0BOTS"'
      limit: {count: 2, per: 1h}
  - name: never delete
    deny: {host: slack.com, path: "/api/*.delete", reason: "deleting is reserved to humans"}
  - name: form posts
    allow: {host: "*.example.com", methods: [POST], path: /form, when: 'request.form.kind == "ok"'}
  - name: header check
    allow: {host: api.example.org, path: "/h/**", when: 'request.headers["x-team"] == "blue"'}
  - name: query check
    allow: {host: api.example.org, path: /search, when: 'request.query.q.startsWith("cats")'}
  - name: broken condition
    allow: {host: broken.example, when: 'request.json.missing.deeper == 1'}
  - name: not a boolean
    allow: {host: nonbool.example, when: 'request.path'}
"""


def policies(*texts: str) -> PolicySet:
    out = []
    for i, text in enumerate(texts):
        policy, problems = check_policy_text(textwrap.dedent(text), f"p{i}.yaml")
        assert policy is not None, problems
        out.append(policy)
    return PolicySet.of(out)


def view(method="GET", host="slack.com", path="/", agent="bot", body=b"", headers=(), query=()) -> RequestView:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    return RequestView(agent, method, "https", host, 443, path, tuple(query), tuple(headers), body)


CASES = {
    "a listed read is allowed by its rule": (
        view("GET", path="/api/conversations.list"), "allow", "allowed by rule 'read channels'"),
    "brace alternatives match each branch": (
        view("POST", path="/api/conversations.history"), "allow", "allowed by rule 'read channels'"),
    "a method outside the rule is default-denied": (
        view("DELETE", path="/api/conversations.list"), "deny", "no rule allows DELETE slack.com/api/conversations.list"),
    "a matching deny rule gives its own reason": (
        view("POST", path="/api/chat.delete"), "deny", "deleting is reserved to humans"),
    "a CEL condition on the JSON body allows the right channel": (
        view("POST", path="/api/chat.postMessage", body={"channel": "C0BOTS"}), "allow", "post to bots"),
    "a CEL condition that is false falls through to default deny": (
        view("POST", path="/api/chat.postMessage", body={"channel": "C0OTHER"}), "deny", "no rule allows POST"),
    "an agent the policy does not name is denied": (
        view("GET", path="/api/conversations.list", agent="stranger"), "deny", "for agent 'stranger'"),
    "a request with no agent is denied": (
        view("GET", path="/api/conversations.list", agent=None), "deny", "no known agent identity"),
    "an unknown host is denied by default": (
        view("GET", host="evil.example"), "deny", "no rule allows GET evil.example/"),
    "an IPv6 host is named in brackets, as a URL writes it": (
        view("GET", host="::127.0.0.1"), "deny", "no rule allows GET [::127.0.0.1]/"),
    "host globs match one label": (
        view("POST", host="a.example.com", path="/form", body=b"kind=ok",
             headers=[("content-type", "application/x-www-form-urlencoded")]), "allow", "form posts"),
    "host globs do not match the bare domain": (
        view("POST", host="example.com", path="/form", body=b"kind=ok",
             headers=[("content-type", "application/x-www-form-urlencoded")]), "deny", "no rule allows"),
    "CEL sees headers": (
        view("GET", host="api.example.org", path="/h/x", headers=[("x-team", "blue")]), "allow", "header check"),
    "CEL sees the query": (
        view("GET", host="api.example.org", path="/search", query=[("q", "cats and dogs")]), "allow", "query check"),
    "a CEL evaluation error denies with the rule and the error": (
        view("GET", host="broken.example", body={"a": 1}), "deny", "rule 'broken condition' could not be evaluated"),
    "a non-boolean CEL result denies": (
        view("GET", host="nonbool.example"), "deny", "not a boolean"),
}


@pytest.mark.parametrize("sentence", sorted(CASES))
def test_decision_table(sentence: str) -> None:
    """Each row of the table: the effect and the reason the engine gives."""
    request, effect, reason = CASES[sentence]
    d = decide(request, policies(SLACK), 1000.0, LimitCounters())
    assert d.effect == effect, (sentence, d)
    assert reason in d.reason, (sentence, d.reason)


def test_evaluation_error_denies_even_if_another_rule_allows() -> None:
    """Fail closed: a matching rule whose condition cannot be evaluated denies, whatever else allows."""
    ps = policies(SLACK, """
        version: 1
        name: more
        rules:
          - name: needs a header
            allow: {host: api.example.org, path: /search, when: 'request.headers["x-team"] == "blue"'}
    """)
    d = decide(view("GET", host="api.example.org", path="/search", query=[("q", "cats")]), ps, 0, LimitCounters())
    assert d.effect == "deny"
    assert "rule 'needs a header' could not be evaluated" in d.reason and "no such key 'x-team'" in d.reason


def test_denial_lists_what_is_allowed_instead() -> None:
    """A denial on a host names the allow rules the agent has there."""
    d = decide(view("PUT", path="/api/x"), policies(SLACK), 0, LimitCounters())
    assert any("read channels" in alt for alt in d.allowed_instead)
    assert not any("never delete" in alt for alt in d.allowed_instead)


def test_limit_caps_and_window_slides() -> None:
    """The third post within the hour is denied with a wait time; an hour after the first, one more is allowed."""
    ps, counts = policies(SLACK), LimitCounters()
    post = view("POST", path="/api/chat.postMessage", body={"channel": "C0BOTS"})
    for t in (0.0, 10.0):
        d = decide(post, ps, t, counts)
        assert d.effect == "allow" and d.count_limits == ("slack/post to bots",)
        counts.record(d.count_limits, "bot", t)
    third = decide(post, ps, 20.0, counts)
    assert third.effect == "deny"
    assert "limit reached: rule 'post to bots' allows at most 2 per 1h for agent 'bot'" in third.reason
    assert "next one is allowed in 3581s" in third.reason
    assert decide(post, ps, 3600.5, counts).effect == "allow"


def test_limit_is_a_cap_even_when_another_rule_allows() -> None:
    """A spent limit denies even if a second, unlimited rule also matches."""
    ps = policies(SLACK, """
        version: 1
        name: broad
        rules:
          - name: anything on slack
            allow: {host: slack.com}
    """)
    counts = LimitCounters()
    counts.record(["slack/post to bots"] * 2, "bot", 0)
    d = decide(view("POST", path="/api/chat.postMessage", body={"channel": "C0BOTS"}), ps, 1, counts)
    assert d.effect == "deny" and "limit reached" in d.reason


REPORT = """
version: 1
name: trial
mode: report
rules:
  - name: no posts
    deny: {host: slack.com, path: /api/chat.postMessage, reason: "posting would be denied"}
"""


def test_report_mode_allows_what_it_would_deny() -> None:
    """A report-mode deny lets the request through, labelled report, with the would-be reason."""
    d = decide(view("POST", path="/api/chat.postMessage"), policies(REPORT), 0, LimitCounters())
    assert (d.effect, d.label) == ("allow", "report")
    assert "posting would be denied" in (d.report or "")


def test_report_mode_never_overrides_an_enforced_deny() -> None:
    """An enforced deny still denies when a report-mode policy also applies."""
    d = decide(view("POST", path="/api/chat.delete"), policies(SLACK, REPORT), 0, LimitCounters())
    assert d.effect == "deny" and d.reason == "deleting is reserved to humans"


def test_report_mode_annotates_an_enforced_allow() -> None:
    """When an enforced policy allows and a report-mode one would deny, the decision is report."""
    d = decide(view("POST", path="/api/chat.postMessage", body={"channel": "C0BOTS"}),
               policies(SLACK, REPORT), 0, LimitCounters())
    assert d.label == "report" and d.rule == "slack/post to bots"


methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
paths = st.sampled_from(["/", "/api/chat.delete", "/api/chat.postMessage", "/api/conversations.list", "/x/y"])
hosts = st.sampled_from(["slack.com", "a.example.com", "api.example.org", "evil.example"])


@given(method=methods, path=paths, host=hosts, agent=st.text(min_size=1, max_size=12).filter(lambda a: a != "bot"))
def test_unknown_agent_always_denied(method: str, path: str, host: str, agent: str) -> None:
    """An agent that no policy names is denied whatever it asks for."""
    d = decide(view(method, host, path, agent=agent, body={"channel": "C0BOTS"}), policies(SLACK), 0, LimitCounters())
    assert d.effect == "deny"


@given(method=methods, path=paths, host=hosts)
def test_deny_beats_allow(method: str, path: str, host: str) -> None:
    """Adding a policy that denies everything turns every decision into deny, whatever else allows."""
    deny_all = """
        version: 1
        name: lockdown
        rules:
          - name: nothing at all
            deny: {reason: "locked down"}
    """
    d = decide(view(method, host, path), policies(SLACK, deny_all), 0, LimitCounters())
    assert d.effect == "deny" and d.reason in ("locked down", "deleting is reserved to humans")


def test_budget_without_window_never_refills() -> None:
    """A limit with no `per` is a budget for all time: once spent, it stays spent."""
    ps = policies("""
        version: 1
        name: budget
        rules:
          - name: one refund ever
            allow: {host: api.example.org, path: /refund, limit: {count: 1}}
    """)
    counts = LimitCounters()
    first = decide(view("POST", host="api.example.org", path="/refund"), ps, 0, counts)
    assert first.effect == "allow"
    counts.record(first.count_limits, "bot", 0)
    later = decide(view("POST", host="api.example.org", path="/refund"), ps, 10 * 365 * 86400, counts)
    assert later.effect == "deny" and "at most 1 in all" in later.reason


PATHS = {
    "an escaped unreserved character is decoded": ("/public/%61dmin/x", "/public/admin/x"),
    "an escaped tilde is decoded": ("/%7Euser", "/~user"),
    "an escaped slash stays escaped (it is data, not a separator)": ("/a%2fb", "/a%2Fb"),
    "an escaped @ stays escaped": ("/users/me%40x.com", "/users/me%40x.com"),
    "a trailing slash is kept": ("/a/b/", "/a/b/"),
    "a dot segment is ambiguous": ("/public/./admin", None),
    "a dot-dot segment is ambiguous": ("/public/../secret", None),
    "an escaped dot-dot segment is ambiguous": ("/%2e%2e/secret", None),
    "an empty segment is ambiguous": ("/public//admin", None),
    "a backslash is ambiguous": ("/public\\admin", None),
    "an escaped backslash is ambiguous": ("/public%5cadmin", None),
}


@pytest.mark.parametrize("sentence", sorted(PATHS))
def test_canonical_path(sentence: str) -> None:
    """Policies match one spelling of each path; spellings servers read differently are refused (None)."""
    from goex_proxy.policy.requestview import canonical_path

    raw, expected = PATHS[sentence]
    assert canonical_path(raw) == expected


def test_report_mode_does_not_open_hosts_it_does_not_cover() -> None:
    """A report-mode policy about Slack leaves enforced default deny in place on every other host."""
    gmail = """
        version: 1
        name: gmail
        rules:
          - name: read
            allow: {host: gmail.googleapis.com, methods: [GET]}
    """
    ps = policies(gmail, REPORT)
    assert decide(view("POST", host="gmail.googleapis.com", path="/x"), ps, 0, LimitCounters()).effect == "deny"
    assert decide(view("POST", host="evil.example", path="/x"), ps, 0, LimitCounters()).effect == "deny"
    slack = decide(view("POST", path="/api/conversations.list"), ps, 0, LimitCounters())
    assert slack.label == "report" and "report mode" in (slack.report or "")


def test_report_mode_allow_alone_is_labelled_report() -> None:
    """A request allowed only by a report-mode rule is let through but labelled report: enforced, it would be denied."""
    trial = """
        version: 1
        name: trial-allow
        mode: report
        rules:
          - name: posting
            allow: {host: slack.com, path: /api/chat.postMessage}
    """
    d = decide(view("POST", path="/api/chat.postMessage"), policies(trial), 0, LimitCounters())
    assert (d.effect, d.label) == ("allow", "report") and "would be denied" in (d.report or "")


PROTOCOLS = """
    version: 1
    name: p
    rules:
      - name: postgres
        allow: {host: db.example.com, protocol: tcp, ports: [5432]}
      - name: irc upgrade
        allow: {host: chat.example.com, path: /irc, protocol: IRC}
      - name: web
        allow: {host: "*.example.com"}
      - name: nothing to evil
        deny: {host: evil.example.com}
      - name: tcp to evil (the deny wins)
        allow: {host: evil.example.com, protocol: tcp}
"""


def tcp(host: str, port: int, agent: str = "bot") -> RequestView:
    return RequestView(agent, "", "tcp", host, port, "", protocol="tcp")


def test_uninspectable_protocols_are_allowed_only_by_a_rule_that_names_them() -> None:
    ps = policies(PROTOCOLS)
    assert decide(tcp("db.example.com", 5432), ps, 0, LimitCounters()).rule == "p/postgres"
    other_port = decide(tcp("db.example.com", 5433), ps, 0, LimitCounters())
    assert other_port.effect == "deny" and "no rule allows raw TCP to db.example.com:5433" in other_port.reason
    # `web` allows any HTTP on *.example.com, but not raw TCP there, nor an upgrade it does not name
    assert decide(tcp("www.example.com", 443), ps, 0, LimitCounters()).effect == "deny"
    upgrade = dataclasses.replace(view(host="www.example.com", path="/irc"), protocol="irc")
    refused = decide(upgrade, ps, 0, LimitCounters())
    assert refused.effect == "deny" and "upgrading to 'irc'" in refused.reason
    named = dataclasses.replace(view(host="chat.example.com", path="/irc"), protocol="irc")
    assert decide(named, ps, 0, LimitCounters()).rule == "p/irc upgrade"
    assert decide(view(host="chat.example.com", path="/irc"), ps, 0, LimitCounters()).rule == "p/web"


def test_a_deny_without_a_protocol_covers_every_protocol() -> None:
    d = decide(tcp("evil.example.com", 22), policies(PROTOCOLS), 0, LimitCounters())
    assert (d.effect, d.rule) == ("deny", "p/nothing to evil")


# -- keys sent twice, and paths as servers route them -------------------------------------------------------------------

READINGS = """
    version: 1
    name: r
    servers:
      slack.com: {path_case: insensitive, trailing_slash: optional}
      "*.slack.com": {trailing_slash: optional}
    rules:
      - name: post to bots
        allow: {host: [slack.com, api.example.org], methods: [POST], path: /api/chat.postMessage,
                when: 'request.query.channel.startsWith("C0BOTS")'}
      - name: post a form to bots
        allow: {host: api.example.org, methods: [POST], path: /api/form.post,
                when: 'request.form.channel.startsWith("C0BOTS")'}
      - name: react in bots
        allow: {host: [slack.com, api.example.org], methods: [POST], path: /api/reactions.add, duplicate_keys: accept,
                when: 'request.query.channel.startsWith("C0BOTS") && !("name" in request.query && request.query.name == "skull")'}
      - name: read anything
        allow: {host: [slack.com, files.slack.com, api.example.org], methods: [GET], path: "/**"}
      - name: a case-blind route
        allow: {host: api.example.org, methods: [PUT], path: /v1/Items, path_case: insensitive}
      - name: never delete files
        deny: {host: [slack.com, files.slack.com, api.example.org], path: /api/files.delete, reason: humans delete}
      - name: never the Admin page
        deny: {host: api.example.org, path: "/Admin/**", reason: admins only}
"""
FORM_TYPE = ("content-type", "application/x-www-form-urlencoded")


def query(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(pair.split("=", 1)) for pair in text.split("&"))  # type: ignore[misc]


READING_CASES = {
    "a query key sent once is decided as before": (
        view("POST", path="/api/chat.postMessage", query=query("channel=C0BOTS")), "allow", "r/post to bots", ""),
    "a query key sent twice is refused, naming the key and the query": (
        view("POST", path="/api/chat.postMessage", query=query("channel=C0BOTS&channel=C0SECRET")),
        "deny", "request-reading", "the query has the key 'channel' more than once"),
    "a query key sent twice with one value twice is still refused (a list is not a string)": (
        view("POST", path="/api/chat.postMessage", query=query("channel=C0BOTS&channel=C0BOTS")),
        "deny", "request-reading", "rule 'post to bots' does not accept"),
    "a form field sent twice is refused, naming the key and the form": (
        view("POST", host="api.example.org", path="/api/form.post", body=b"channel=C0BOTS&channel=C0SECRET",
             headers=[FORM_TYPE]), "deny", "request-reading", "the form has the key 'channel' more than once"),
    "a form field sent twice in a body not declared a form is not a form": (
        view("POST", host="api.example.org", path="/api/chat.postMessage", body=b"channel=C0X&channel=C0X",
             query=query("channel=C0BOTS")), "allow", "r/post to bots", ""),
    "a rule that accepts duplicate keys allows them when every value is allowed": (
        view("POST", path="/api/reactions.add", query=query("channel=C0BOTS1&channel=C0BOTS2&name=eyes")),
        "allow", "r/react in bots", ""),
    "a rule that accepts duplicate keys decides the last value too": (
        view("POST", path="/api/reactions.add", query=query("channel=C0BOTS&channel=C0SECRET")),
        "deny", "request-reading", "'C0SECRET'"),
    "a rule that accepts duplicate keys decides a value between the first and the last": (
        view("POST", path="/api/reactions.add", query=query("channel=C0BOTS&channel=C0SECRET&channel=C0BOTS2")),
        "deny", "request-reading", "'C0SECRET'"),
    "a rule that accepts duplicate keys decides every combination of values": (
        view("POST", path="/api/reactions.add", query=query("channel=C0BOTS&channel=C0BOTS2&name=eyes&name=skull")),
        "deny", "request-reading", "'skull'"),
    "a declared case-insensitive server is allowed other spellings of an allowed path": (
        view("POST", path="/API/CHAT.POSTMESSAGE/", query=query("channel=C0BOTS")), "allow", "r/post to bots", ""),
    "an undeclared server is not": (
        view("POST", host="api.example.org", path="/API/CHAT.POSTMESSAGE", query=query("channel=C0BOTS")),
        "deny", None, "no rule allows"),
    "a declared trailing slash alone does not make paths case-insensitive": (
        view("GET", host="files.slack.com", path="/api/FILES.DELETE/"), "deny", "request-reading", "humans delete"),
    "a declared server's deny rule matches other spellings itself": (
        view("POST", path="/api/FILES.DELETE/"), "deny", "r/never delete files", "humans delete"),
    "a rule may declare its own path case-insensitive": (
        view("PUT", host="api.example.org", path="/V1/ITEMS"), "allow", "r/a case-blind route", ""),
    "but not its trailing slash": (
        view("PUT", host="api.example.org", path="/v1/items/"), "deny", None, "no rule allows"),
    "undeclared: a denied path in capitals must not be allowed by a broader rule": (
        view("GET", host="api.example.org", path="/api/FILES.DELETE"), "deny", "request-reading", "humans delete"),
    "undeclared: a denied path with a trailing slash must not be either": (
        view("GET", host="api.example.org", path="/api/files.delete/"), "deny", "request-reading", "humans delete"),
    "undeclared: nor in capitals with a trailing slash": (
        view("GET", host="api.example.org", path="/api/FILES.DELETE/"), "deny", "request-reading", "humans delete"),
    "undeclared: a deny rule spelled in capitals catches the path in lower case": (
        view("GET", host="api.example.org", path="/admin/users"), "deny", "request-reading", "admins only"),
    "undeclared: the reason names the reading": (
        view("GET", host="api.example.org", path="/api/Files.Delete"), "deny", "request-reading",
        "ignores case, a trailing slash"),
    "undeclared: a format suffix reaches the deny rule (Rails)": (
        view("GET", host="api.example.org", path="/api/files.delete.json"), "deny", "request-reading", "format suffix"),
}


@pytest.mark.parametrize("sentence", sorted(READING_CASES))
def test_readings_table(sentence: str) -> None:
    """Each row: the effect, the rule, and words of the reason."""
    request, effect, rule, words = READING_CASES[sentence]
    d = decide(request, policies(READINGS), 1000.0, LimitCounters())
    assert (d.effect, d.rule) == (effect, rule), (sentence, d)
    assert words in d.reason, (sentence, d.reason)


def test_too_many_combinations_of_repeated_keys_are_refused() -> None:
    """Every combination of values is decided, up to a bound; past it the request is refused, not half decided."""
    many = "&".join(f"channel=C0BOTS{i}&name=n{i}" for i in range(20))
    d = decide(view("POST", path="/api/reactions.add", query=query(many)), policies(READINGS), 0, LimitCounters())
    assert (d.effect, d.rule) == ("deny", "request-reading") and "too many" in d.reason


def test_a_server_declaration_holds_for_every_policy() -> None:
    """`servers:` describes the server, so another policy's deny rule matches its other spellings too."""
    other = """
        version: 1
        name: other
        rules:
          - name: no archiving
            deny: {host: slack.com, path: /api/conversations.archive}
    """
    d = decide(view("POST", path="/API/Conversations.Archive/", query=query("channel=C0BOTS")),
               policies(READINGS, other), 0, LimitCounters())
    assert (d.effect, d.rule) == ("deny", "other/no archiving")


@pytest.mark.parametrize(("pattern", "backtracks"), [
    ("/repos/*/*/issues/*/comments", False),   # one star per segment: each is tried within its segment only
    ("/repos/**/issues/*/comments", False),    # one ** before segment stars
    ("/x/**", False),
    ("/repos/**/issues/**/comments", True),    # held the event loop 3-9 s on a 90 KB path under `re`
    ("/api/*-*-*-*-x", True),                  # 32 s on a 405-byte path under `re`
    ("/a/**b*", True),
    ("/a/{x*,y}/b", True),
])
def test_globs_that_could_backtrack_match_with_re2_and_the_rest_with_re(pattern, backtracks) -> None:
    """Python's `re` is ten times faster per call than RE2's binding, but backtracks; a glob whose wildcards could
    overlap goes to RE2, and both engines agree on what the glob matches."""
    import re

    from goex_proxy.globs import compile_path

    glob = compile_path(pattern)
    assert isinstance(glob.regex, re.Pattern) is not backtracks
    sample = "/repos/acme/w/issues/1/comments"
    assert glob.matches(sample) == (re.fullmatch(glob.regex.pattern, sample) is not None)
