"""`undo --propose`, its pure parts: what the model is shown (no secret), what of its answer is refused and why, the
policy check, and an accepted proposal as an undo rule the planner follows to the same requests."""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from goex_proxy.agent.llm import secret_scrubber
from goex_proxy.agent.propose import (
    MAX_STEPS,
    ProposalError,
    canonical_json,
    check_policy,
    check_row,
    parse_proposal,
    prompt_for,
    rule_yaml,
)
from goex_proxy.config import LLM, Config
from goex_proxy.credentials.kinds import Credential, Injection
from goex_proxy.credentials.vault import Vault
from goex_proxy.errors import GoexError, NotFound
from goex_proxy.globs import compile_host
from goex_proxy.policy.engine import PolicySet
from goex_proxy.policy.limits import LimitCounters
from goex_proxy.policy.load import check_policy_text
from goex_proxy.secretref import SecretRef
from goex_proxy.undo.plan import Exchange, plan
from goex_proxy.undo.rules import check_pack_text

NOTES = "http://notes.example"


def row(method: str = "POST", url: str = f"{NOTES}/posts", body: Any = None, status: int | None = 201,
        response: Any = None, resp_headers: tuple[tuple[str, str], ...] = (), pre: Any = None,
        pre_status: int | None = None, rid: str = "R1", **extra: Any) -> dict[str, Any]:
    req = json.dumps(body if body is not None else {"title": "agent's post"}).encode()
    resp = json.dumps(response if response is not None else {"title": "agent's post", "id": "ab12"}).encode()
    pre_body = json.dumps(pre).encode() if pre is not None else None
    return {"id": rid, "agent": "mailbot", "decision": "allow", "method": method, "url": url,
            "req_headers": json.dumps([["Content-Type", "application/json"]]), "req_body": req,
            "req_body_size": len(req), "status": status, "resp_headers": json.dumps([list(h) for h in resp_headers]),
            "resp_body": resp, "resp_body_size": len(resp), "pre_status": pre_status,
            "pre_headers": json.dumps([]) if pre_status is not None else None, "pre_body": pre_body,
            "pre_body_size": len(pre_body) if pre_body else None, "undo_of": None, **extra}


def step(method: str = "DELETE", url: str = f"{NOTES}/posts/ab12", **more: Any) -> dict[str, Any]:
    return {"method": method, "url": url, "why": "deletes the post the agent created", **more}


def proposal(*steps: dict[str, Any], explanation: str = "the post is deleted") -> dict[str, Any]:
    return {"steps": list(steps), "explanation": explanation}


CREDENTIALS = [Credential("notes-key", SecretRef(env="NOTES_KEY"), (compile_host("notes.example"),),
                          Injection("header", "X-Notes-Key", "{secret}")),
               Credential("maps", SecretRef(env="MAPS_KEY"), (compile_host("maps.example"),), Injection("query", "key"))]


# --- what of the model's answer is refused ---------------------------------------------------------------------------


def test_a_well_formed_proposal_becomes_steps_sent_as_the_planner_would() -> None:
    p = parse_proposal(proposal(step(), step("PUT", f"{NOTES}/posts/1", body={"title": "one"}),
                                step("POST", f"{NOTES}/log", headers={"Content-Type": "text/plain"}, body="undone")),
                       row())
    assert p.explanation == "the post is deleted"
    steps = [s.step() for s in p.steps]
    assert [s.describe() for s in steps] == [f"DELETE {NOTES}/posts/ab12", f"PUT {NOTES}/posts/1", f"POST {NOTES}/log"]
    assert steps[0].body is None and steps[0].repeatable
    assert steps[1].body == b'{"title": "one"}' and steps[1].headers == (("Content-Type", "application/json"),)
    assert steps[2].body == b"undone" and steps[2].headers == (("Content-Type", "text/plain"),)
    assert not steps[2].repeatable  # a POST is not sent again by a resumed undo that cannot tell it arrived


@pytest.mark.parametrize(("answer", "message"), [
    ([step()], "the model's answer is a JSON list, not an object with 'steps'"),
    ({"explanation": "hm"}, "the model's answer has no 'steps' list"),
    (proposal(explanation="a sent e-mail cannot be unsent"),
     "the model proposed no compensating request: a sent e-mail cannot be unsent"),
    (proposal(*[step()] * (MAX_STEPS + 1)), f"the model proposed {MAX_STEPS + 1} steps; at most {MAX_STEPS}"),
    (proposal("DELETE /posts/1"), "step 1 is a JSON string, not an object"),
    (proposal(step("GET")), "step 1's method 'GET' is not a compensating request"),
    (proposal(step("BREW")), "step 1's method 'BREW' is not a compensating request"),
    (proposal(step(json={"a": 1})), "step 1 has the unknown field 'json'"),
    (proposal(step(url="/posts/ab12")), "step 1's URL '/posts/ab12' is not an absolute http(s) URL"),
    (proposal(step(url="ftp://notes.example/posts/1")), "is not an absolute http(s) URL"),
    (proposal(step(url=None)), "step 1 has no 'url' string"),
    (proposal(step(), step(url="http://evil.example/posts/ab12")),
     "step 2 is aimed at http://evil.example, not at the origin of the request it undoes (http://notes.example)"),
    (proposal(step(url="https://notes.example/posts/ab12")), "is aimed at https://notes.example, not at the origin"),
    (proposal(step(url="http://notes.example:8080/posts/ab12")), "is aimed at http://notes.example:8080"),
    (proposal(step(url="http://notes.example.evil.example/x")), "is aimed at http://notes.example.evil.example"),
    (proposal(step(url="http://me:pw@notes.example/posts/1")), "carries a user name or password"),
    (proposal(step(url="http://notes.example/posts/../admin")), "is ambiguous"),
    (proposal(step(url="http://notes.example/posts/1 x")), "has spaces or control characters"),
    (proposal(step(headers=["X-A", "b"])), "'headers' is a JSON list, not an object of strings"),
    (proposal(step(headers={"X-Count": 3})), "header 'X-Count' is not a header name with a string value"),
    (proposal(step(headers={"Authorization": "Bearer x"})), "sets the credential header 'Authorization'"),
    (proposal(step(headers={"cookie": "s=1"})), "sets the credential header 'cookie'"),
    (proposal(step(headers={"X-Api-Key": "k"})), "sets the credential header 'X-Api-Key'"),
    (proposal(step(headers={"X-Notes-Key": "k"})), "sets the credential header 'X-Notes-Key'"),
    (proposal(step(headers={"X-Session-Id": "k"})), "sets the credential header 'X-Session-Id'"),
    (proposal(step(headers={"Host": "evil.example"})), "sets the header 'Host', which only the proxy may set"),
    (proposal(step(headers={"X-Goex-Undo-Of": "R9"})), "sets the header 'X-Goex-Undo-Of'"),
    (proposal(step(headers={"X-Note": "a\r\nX-Evil: 1"})), "has a line break in its value"),
    (proposal(step(url="http://notes.example/posts?key=k")), "sets the credential parameter 'key'"),
    (proposal(step("POST", f"{NOTES}/posts", body={"token": "goex-placeholder-notes-key"})),
     "carries a credential placeholder or a redacted value"),
    (proposal(step(headers={"X-Note": "Bearer <redacted>"})), "carries a credential placeholder"),
    (proposal(step(why=["x"])), "'why' is a JSON list, not a string"),
])
def test_each_problem_of_a_proposal_is_refused_with_a_clear_message(answer: Any, message: str) -> None:
    with pytest.raises(ProposalError) as err:
        parse_proposal(answer, row(), CREDENTIALS)
    text = str(err.value)
    assert message in text, text
    assert text.startswith("refused the model's proposal: ") and text.endswith("; nothing was run")
    assert "\n" not in text


# --- policy ----------------------------------------------------------------------------------------------------------


def policies(text: str) -> PolicySet:
    policy, problems = check_policy_text(textwrap.dedent(text), "notes.yaml")
    assert policy is not None, problems
    return PolicySet.of([policy])


NOTES_POLICY = """
    version: 1
    name: notes
    rules:
      - name: posts
        allow: {host: notes.example, methods: [GET, POST, DELETE], path: "/posts/**"}
      - name: one cleanup an hour
        allow: {host: notes.example, methods: [POST], path: /cleanup, limit: {count: 1, per: 1h}}
      - name: never delete comments
        deny: {host: notes.example, methods: [DELETE], path: "/comments/**", reason: comments are kept forever}
"""


def test_each_step_must_be_allowed_for_the_original_agent() -> None:
    rules = policies(NOTES_POLICY)
    allowed = check_policy(parse_proposal(proposal(step()), row()), "mailbot", rules, LimitCounters(), 0.0)
    assert [d.rule for d in allowed] == ["notes/posts"]

    denied = parse_proposal(proposal(step(), step(url=f"{NOTES}/comments/4")), row())
    with pytest.raises(ProposalError, match=r"step 2 \(DELETE http://notes.example/comments/4\) would be denied by "
                                            r"policy \(rule notes/never delete comments\): comments are kept forever"):
        check_policy(denied, "mailbot", rules, LimitCounters(), 0.0)
    with pytest.raises(ProposalError, match="no rule allows PUT notes.example/posts/1 for agent 'mailbot'"):
        check_policy(parse_proposal(proposal(step("PUT", f"{NOTES}/posts/1")), row()), "mailbot", rules,
                     LimitCounters(), 0.0)


def test_limits_count_the_steps_before_any_is_sent() -> None:
    twice = parse_proposal(proposal(step("POST", f"{NOTES}/cleanup"), step("POST", f"{NOTES}/cleanup")), row())
    with pytest.raises(ProposalError, match="step 2 .* limit reached: rule 'one cleanup an hour'"):
        check_policy(twice, "mailbot", policies(NOTES_POLICY), LimitCounters(), 100.0)


# --- what the model is shown -----------------------------------------------------------------------------------------

SECRET = "CANARY-notes-s3cr3t-7f2a"
VAULTED = "CANARY-vault-only-9d1c"
LLM_KEY = "sk-CANARY-llm-key-0042"


def test_no_secret_the_proxy_knows_reaches_the_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTES_KEY", SECRET)
    monkeypatch.setenv("LLM_KEY", LLM_KEY)
    monkeypatch.setenv("GOEX_PROXY_KEY", "a passphrase for the test vault")
    Vault(tmp_path).set("unused", VAULTED)
    config = Config(file=tmp_path / "config.yaml", state_dir=tmp_path, credentials={c.name: c for c in CREDENTIALS},
                    llm=LLM("http://127.0.0.1:1/v1", "m", SecretRef(env="LLM_KEY")))
    b64 = base64.b64encode(SECRET.encode()).decode()
    # A row as if recorded before the secrets were known (the proxy's own scrubbing missed them): every field has one.
    leaky = row(url=f"{NOTES}/posts?sig={SECRET}", body={"note": SECRET, "vault": VAULTED, "llm": LLM_KEY},
                response={"id": "ab12", "echo": f"Basic {b64}"}, resp_headers=(("X-Echo", SECRET),),
                pre={"id": "ab12", "k": VAULTED}, pre_status=200,
                req_headers=json.dumps([["X-Notes-Key", SECRET], ["Authorization", f"Bearer {SECRET}"],
                                        ["X-Trace", SECRET]]))
    messages = prompt_for(leaky, secret_scrubber(config), ["POST notes.example/posts/** ('posts')"], {"x-notes-key"})
    text = json.dumps(messages) + "".join(m["content"] for m in messages)
    for secret in (SECRET, VAULTED, LLM_KEY, b64, b64.rstrip("=")):
        assert secret not in text
    user = json.loads(messages[1]["content"].split("\n", 1)[1])
    assert user["request"]["headers"] == [["X-Notes-Key", "<set by the proxy>"], ["Authorization", "Bearer <redacted>"],
                                          ["X-Trace", "goex-placeholder-notes-key"]]
    assert user["request"]["body"]["vault"] == "goex-placeholder-vault-unused"
    assert user["pre_image"]["status"] == 200 and user["response"]["status"] == 201
    system = messages[0]["content"]
    assert "http://notes.example" in system and "It allows: POST notes.example/posts/** ('posts')" in system


def test_a_vault_that_cannot_be_opened_stops_the_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOEX_PROXY_KEY", "the right passphrase")
    Vault(tmp_path).set("s", VAULTED)
    monkeypatch.setenv("GOEX_PROXY_KEY", "a wrong passphrase")
    with pytest.raises(GoexError, match="cannot open the vault"):
        secret_scrubber(Config(file=tmp_path / "config.yaml", state_dir=tmp_path))


# --- which rows a model is asked about ------------------------------------------------------------------------------


def test_only_a_request_no_rule_plans_goes_to_the_model() -> None:
    rules = check_pack_text(Path(__file__).parents[2].joinpath("policies/undo/rest.yaml").read_text(), "rest")[0]
    created = row()
    check_row(created, plan("R1", Exchange.from_row(created), ()), {})
    with pytest.raises(GoexError, match=r"the undo rule rest/create in a collection already plans the undo of R1: "
                                        r"run `goex-proxy undo R1` without --propose"):
        check_row(created, plan("R1", Exchange.from_row(created), rules), {})
    with pytest.raises(NotFound, match="nothing to undo for R1: a GET changes nothing"):
        check_row(row("GET", status=200), plan("R1", Exchange("GET", NOTES), ()), {})
    with pytest.raises(NotFound, match="the proxy did not let it through"):
        check_row(row(decision="deny"), plan("R1", Exchange.from_row(created), ()), {})
    with pytest.raises(GoexError, match="it is itself the undo of R0"):
        check_row(row(undo_of="R0"), plan("R1", Exchange.from_row(created), ()), {})
    with pytest.raises(GoexError, match="no recorded outcome"):
        check_row(row(status=None), plan("R1", Exchange.from_row(created), ()), {})
    with pytest.raises(GoexError, match="already sent 1 step"):
        check_row(created, plan("R1", Exchange.from_row(created), ()), {0: "done", 1: "failed"})
    unsure = row(url=f"{NOTES}/posts/\\udcff")  # as the audit writer stores a byte that is not UTF-8
    with pytest.raises(GoexError, match="not UTF-8"):
        check_row(unsure, plan("R1", Exchange.from_row(unsure), ()), {})


# --- an accepted proposal as a rule ----------------------------------------------------------------------------------


def planned(text: str, r: dict[str, Any]) -> list[tuple[str, str, tuple[tuple[str, str], ...], bytes | None]]:
    rules, problems = check_pack_text(text, "saved.yaml")
    assert rules and not [p for p in problems if p.severity == "error"], problems
    guarded = rules[0].guard is not None
    assert guarded == (len(rules[0].undo) == 1 and rules[0].undo[0].method == "DELETE")
    assert [p.severity for p in problems] == ([] if guarded else ["warning"])   # said unguarded, honestly
    p = plan(str(r["id"]), Exchange.from_row(r), rules)
    assert p.verdict == "plan", p.reason
    return [(s.method, s.url, s.headers, canonical_json(s.body)) for s in p.steps]


def sent(p: Any) -> list[tuple[str, str, tuple[tuple[str, str], ...], bytes | None]]:
    """The proposal's steps as sent (JSON bodies with sorted keys: CEL gives a rendered object's keys in its order)."""
    return [(s.method, s.url, s.headers, canonical_json(s.body)) for s in (x.step() for x in p.steps)]


def body(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def test_a_create_becomes_a_rule_that_deletes_whatever_each_request_created() -> None:
    first = row()
    accepted = parse_proposal(proposal(step()), first)
    text = rule_yaml(first, accepted, "notes-undo", "fake-model")
    assert planned(text, first) == sent(accepted)
    assert "${response.json.id}" in text and "path: /posts" in text and "class: lossy" in text
    second = row(rid="R2", response={"title": "another", "id": "zz99"})
    assert planned(text, second) == [("DELETE", f"{NOTES}/posts/zz99", (), None)]
    rules = check_pack_text(text, "saved.yaml")[0]
    assert rules[0].pack == "notes-undo" and rules[0].name == "undo POST /posts (proposed by fake-model)"
    # Another path, or a response without the id the rule reads, is not this rule's.
    assert plan("R3", Exchange.from_row(row(url=f"{NOTES}/comments")), rules).verdict == "no rule"
    assert plan("R4", Exchange.from_row(row(response={"title": "x"})), rules).verdict == "no rule"


def test_an_update_becomes_a_rule_that_puts_back_each_pre_image() -> None:
    before = {"id": 7, "title": "seven", "tags": ["a"]}
    first = row("PATCH", f"{NOTES}/posts/7", {"title": "patched"}, 200, {"id": 7, "title": "patched", "tags": ["a"]},
                pre=before, pre_status=200)
    accepted = parse_proposal(proposal(step("PUT", f"{NOTES}/posts/7", body=before, headers={"If-Match": "*"})), first)
    text = rule_yaml(first, accepted, "notes-undo")
    assert planned(text, first) == sent(accepted)
    assert "path: /posts/*" in text and "${request.url}" in text and "${pre.json}" in text
    assert "class: needs-preimage" in text and "preimage:" in text
    rules = check_pack_text(text, "saved.yaml")[0]
    assert rules[0].preimage is not None  # later requests of this kind get their pre-image read
    other = {"id": 9, "title": "nine", "draft": True}
    second = row("PATCH", f"{NOTES}/posts/9", {"title": "x"}, 200, {"id": 9, "title": "x"}, pre=other, pre_status=200,
                 rid="R2")
    assert planned(text, second) == [("PUT", f"{NOTES}/posts/9", (("If-Match", "*"), ("Content-Type", "application/json")),
                                      body(other))]


def test_values_are_tied_one_by_one_and_the_rest_stays_literal() -> None:
    first = row("POST", f"{NOTES}/posts/7/archive", {}, 200, {"postId": 7, "state": "archived"},
                pre={"id": 7, "title": "seven", "state": "open"}, pre_status=200)
    accepted = parse_proposal(proposal(step("POST", f"{NOTES}/posts/7/unarchive?notify=false",
                                            body={"post": 7, "state": "open", "by": "${not a template}", "n": 1})),
                              first)
    text = rule_yaml(first, accepted)
    assert planned(text, first) == sent(accepted)
    assert "path: /posts/*/archive" in text
    second = row("POST", f"{NOTES}/posts/8/archive", {}, 200, {"postId": 8, "state": "archived"},
                 pre={"id": 8, "title": "eight", "state": "draft"}, pre_status=200, rid="R2")
    sends = {"post": 8, "state": "draft", "by": "${not a template}", "n": 1}
    assert planned(text, second) == [("POST", f"{NOTES}/posts/8/unarchive?notify=false",
                                      (("Content-Type", "application/json"),), body(sends))]


def test_a_literal_proposal_is_saved_literally() -> None:
    first = row("POST", f"{NOTES}/jobs/run", {}, 202, {"queued": True})
    accepted = parse_proposal(proposal(step("POST", f"{NOTES}/jobs/cancel-all", body="all",
                                            headers={"Content-Type": "text/plain"})), first)
    text = rule_yaml(first, accepted)
    assert planned(text, first) == sent(accepted)
    assert "effective: response.status >= 200 && response.status < 300" in text and "when:" not in text


def test_a_location_no_url_parser_takes_is_left_literal_in_a_saved_rule() -> None:
    """The answer's Location is the agent's upstream's to choose: `http://[x` made saving a proposal as a rule end
    in an internal error (ValueError "Invalid IPv6 URL" while comparing it with each step's URL)."""
    first = row(resp_headers=(("Location", "http://[x"),))
    accepted = parse_proposal(proposal(step()), first)
    text = rule_yaml(first, accepted, "notes-undo", "fake-model")
    assert planned(text, first) == sent(accepted) and "location" not in text
