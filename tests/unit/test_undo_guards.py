"""Guards that can fail: the REST pack compares what names a resource's state (ETag, JSON, exact bytes) for any
content type, restores non-JSON bytes with their own Content-Type, and a rule nothing guards makes its rows
`unguarded`, which undo takes back only with --force."""

from __future__ import annotations

import json
from typing import Any

import pytest

from goex_proxy.presets import undo_dir
from goex_proxy.undo.plan import UNGUARDED, Exchange, Plan, classify, plan
from goex_proxy.undo.rules import check_pack_text, load_packs

REST = load_packs([undo_dir() / "rest.yaml"])
URL = "https://cal.example/calendars/ann/work/meeting.ics"
ICS = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:1\r\nSUMMARY:before\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
AGENTS = ICS.replace(b"before", b"the agent's")
PERSONS = ICS.replace(b"before", b"a person's edit")
CAL = (("Content-Type", "text/calendar; charset=utf-8"),)


def calendar(method: str, status: int, response_headers: tuple[tuple[str, str], ...] = (), pre_status: int = 200,
             request_body: bytes | None = AGENTS, response_body: bytes = b"") -> Exchange:
    return Exchange(method, URL, CAL, request_body, status, response_headers, response_body,
                    pre_status, CAL + (("ETag", '"v1"'),) if pre_status == 200 else (),
                    ICS if pre_status == 200 else b"not found")


def read(status: int, body: bytes, content_type: str = "text/calendar", **headers: str) -> dict[str, Any]:
    from goex_proxy.undo.run import response_view

    return response_view(status, [("Content-Type", content_type), *headers.items()], body)


def guard_holds(p: Plan, answer: dict[str, Any]) -> bool:
    assert p.guard_expect is not None
    return bool(p.guard_expect.evaluate({**p.variables, "read": answer}))


def test_a_replaced_calendar_is_put_back_byte_for_byte_with_its_own_type_and_the_etag_it_was_left_with() -> None:
    exchange = calendar("PUT", 204, (("ETag", '"v2"'),))
    assert classify(REST, exchange) == "needs-preimage"
    p = plan("R1", exchange, REST)
    assert p.verdict == "plan" and not p.unguarded
    [step] = p.steps
    assert (step.method, step.url, step.body) == ("PUT", URL, ICS)
    assert dict(step.headers) == {"Content-Type": "text/calendar; charset=utf-8", "If-Match": '"v2"'}
    assert guard_holds(p, read(200, AGENTS, ETag='"v2"'))
    assert not guard_holds(p, read(200, PERSONS, ETag='"v3"'))       # a person's edit: a conflict, not clobbered


def test_without_an_etag_the_bytes_are_compared_and_a_persons_edit_is_a_conflict() -> None:
    p = plan("R1", calendar("PUT", 204), REST)
    assert p.verdict == "plan" and not p.unguarded and p.fidelity == "needs-preimage"
    assert dict(p.steps[0].headers) == {"Content-Type": "text/calendar; charset=utf-8"}  # no If-Match to send
    assert guard_holds(p, read(200, AGENTS))
    assert not guard_holds(p, read(200, PERSONS))
    assert not guard_holds(p, read(200, b"{}", "application/json"))     # `{} == {}` no longer passes as equal


def test_a_put_that_created_a_calendar_is_deleted_only_while_it_holds_the_agents_bytes() -> None:
    p = plan("R1", calendar("PUT", 201, pre_status=404), REST)
    assert p.verdict == "plan" and not p.unguarded and [s.describe() for s in p.steps] == [f"DELETE {URL}"]
    assert guard_holds(p, read(200, AGENTS)) and guard_holds(p, read(404, b""))
    assert not guard_holds(p, read(200, PERSONS))


def test_a_deleted_calendar_is_put_back_at_its_url_only_if_nothing_is_there() -> None:
    p = plan("R1", calendar("DELETE", 204, request_body=None), REST)
    assert p.verdict == "plan" and p.rule == "rest/delete a resource at its own URL" and not p.unguarded
    [step] = p.steps
    assert (step.method, step.url, step.body) == ("PUT", URL, ICS)
    assert dict(step.headers) == {"Content-Type": "text/calendar; charset=utf-8", "If-None-Match": "*"}


def test_a_deleted_json_resource_is_posted_back_to_its_collection_as_its_bytes() -> None:
    before = b'{"id": 3, "title": "three", "draft": true}'
    exchange = Exchange("DELETE", "https://api.example/posts/3", (), None, 200, (), b"{}", 200,
                        (("Content-Type", "application/json"),), before)
    p = plan("R1", exchange, REST)
    assert p.rule == "rest/delete a JSON resource"
    assert [(s.describe(), s.body, dict(s.headers)) for s in p.steps] == [
        ("POST https://api.example/posts", before, {"Content-Type": "application/json"})]


def test_a_patch_of_a_resource_nothing_identifies_is_unguarded_and_says_why() -> None:
    exchange = calendar("PATCH", 204)
    assert classify(REST, exchange) == UNGUARDED
    p = plan("R1", exchange, REST)
    assert p.verdict == "plan" and p.fidelity == UNGUARDED and "cannot tell a later edit" in p.unguarded
    # The same PATCH answered with an ETag is guarded: the server names the state it left.
    assert classify(REST, calendar("PATCH", 204, (("ETag", '"v2"'),))) == "needs-preimage"


def test_a_create_answered_200_is_undone_but_a_404_then_is_a_conflict_not_already_gone() -> None:
    body = b'{"id": 7, "title": "new"}'
    json_type = (("Content-Type", "application/json"),)
    made = Exchange("POST", "https://api.example/posts", json_type, b'{"title": "new"}', 200, json_type, body)
    p = plan("R1", made, REST)
    assert p.verdict == "plan" and [s.describe() for s in p.steps] == ["DELETE https://api.example/posts/7"]
    assert guard_holds(p, read(200, body, "application/json"))
    assert not guard_holds(p, read(404, b"")) and not guard_holds(p, read(200, b'{"id": 7, "title": "edited"}',
                                                                          "application/json"))
    assert p.steps[0].success is not None
    assert not p.steps[0].success.evaluate({**p.variables, "response": read(404, b"")})   # a failure, not gone
    created = Exchange("POST", "https://api.example/posts", json_type, b'{"title": "new"}', 201,
                       json_type + (("Location", "/posts/7"),), body)
    assert guard_holds(plan("R1", created, REST), read(404, b""))


@pytest.mark.parametrize(("path", "answer"), [
    ("/v1/customers/cus_1", b'{"id": "cus_1", "name": "x"}'),       # an update by POST to the resource itself
    ("/v1/charges", b'{"id": "ch_1", "amount": 500}'),             # a payment: never "undone" by a DELETE
])
def test_a_post_answered_200_that_is_no_create_gets_no_delete(path: str, answer: bytes) -> None:
    json_type = (("Content-Type", "application/json"),)
    posted = Exchange("POST", f"https://api.example{path}", (("Content-Type", "application/x-www-form-urlencoded"),),
                      b"name=x", 200, json_type, answer)
    assert classify(REST, posted) == "no rule" and plan("R1", posted, REST).verdict == "no rule"


PACK = """version: 1
rules:
  - name: put a note
    match: {host: notes.example, methods: [PUT]}
    class: exact
{guard}
    undo:
      - method: DELETE
        url: "${request.url}"
        headers: {If-Match: '${"etag" in response.headers ? response.headers["etag"] : null}'}
"""
NOTE = Exchange("PUT", "https://notes.example/n/1", (("Content-Type", "text/plain"),), b"agent's note", 201,
                (("Content-Type", "text/plain"),), b"")


def pack(guard: str) -> tuple[list[Any], list[Any]]:
    return check_pack_text(PACK.replace("{guard}\n", guard + "\n" if guard else ""), "mine.yaml")


@pytest.mark.parametrize(("guard", "guarded"), [
    ("    guard: {read: {method: GET, url: '${request.url}'}, expect: 'read.json == response.json'}", False),
    ("    guard: {read: {method: GET, url: '${request.url}'}, expect: 'read.status == 200'}", False),
    ("    guard: {read: {method: GET, url: '${request.url}'}, expect: 'read.body == request.body'}", True),
    ("    guard: {read: {method: GET, url: '${request.url}'}, expect: 'read.headers[\"etag\"] == \"x\"'}", True),
    ("    guard: {unneeded: only the agent can write its own notes}", True),
])
def test_a_guard_that_holds_for_a_changed_resource_guards_nothing(guard: str, guarded: bool) -> None:
    rules, problems = pack(guard)
    assert rules and not problems
    assert classify(rules, NOTE) == ("exact" if guarded else UNGUARDED)
    assert plan("R1", NOTE, rules).steps[0].headers == ()   # a header whose value is null is left out


def test_a_rule_with_no_guard_is_pointed_out_and_its_rows_are_unguarded_unless_a_step_is_conditional() -> None:
    bare, problems = check_pack_text(PACK.replace("{guard}\n", "").split("        headers:")[0], "mine.yaml")
    assert [p.severity for p in problems] == ["warning"] and "has no guard" in problems[0].message
    assert "unneeded" in problems[0].message and (problems[0].line, problems[0].col) == (3, 5)
    assert classify(bare, NOTE) == UNGUARDED
    rules, problems = pack("")
    assert not problems                                              # its step may be conditional: no warning,
    assert classify(rules, NOTE) == UNGUARDED                        # but this answer gave no ETag to send
    tagged = Exchange(*NOTE.target()[:1], NOTE.url, NOTE.request_headers, NOTE.request_body, 201,
                      (("ETag", '"n1"'),), b"")
    assert classify(rules, tagged) == "exact"                       # its DELETE carries If-Match: the server checks
    assert dict(plan("R1", tagged, rules).steps[0].headers) == {"If-Match": '"n1"'}


def test_a_guard_without_its_read_is_a_located_error_not_a_crash() -> None:
    """A guard whose `read` key is misspelt (found by the fuzz test: `:read:`) was a KeyError from the loader."""
    rules, problems = pack("    guard: {':read': {method: GET, url: '${request.url}'}, expect: 'read.status == 200'}")
    assert not rules
    assert any("missing the required key 'read'" in p.message for p in problems)
    assert any("unknown key ':read'" in p.message for p in problems)


def test_an_empty_reason_for_needing_no_guard_is_an_error() -> None:
    rules, problems = pack("    guard: {unneeded: ''}")
    assert not rules and any("guard.unneeded" in p.message and p.severity == "error" for p in problems)


@pytest.mark.parametrize(("rule", "message"), [
    ("    when: pre.status == 200\n", "'rules[0].when' reads 'pre', which it never has: the rule has no 'preimage'"),
    ("    when: read.status == 200\n", "'rules[0].when' reads 'read', which it never has: it is the guard's answer"),
    ("    preimage: {method: GET, url: '${response.headers[\"location\"]}'}\n",
     "'rules[0].preimage' reads 'response', which it never has: it is made before the request is forwarded"),
    ("    guard: {read: {method: GET, url: '${read.json.url}'}, expect: 'read.status == 404'}\n",
     "'rules[0].guard.read' reads 'read'"),
])
def test_a_rule_part_that_reads_what_it_never_has_is_an_error_with_its_place(rule: str, message: str) -> None:
    text = PACK.replace("{guard}\n", rule)
    rules, problems = check_pack_text(text, "mine.yaml")
    assert not rules and [p.message for p in problems if p.severity == "error"] == [
        next(p.message for p in problems if message in p.message)]
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t == rule.rstrip("\n"))
    assert [p.line for p in problems if p.severity == "error"] == [line]


def test_a_rule_may_read_the_preimage_an_earlier_rule_reads_for_the_same_requests() -> None:
    earlier = ("version: 1\nrules:\n  - name: replace\n    match: {host: notes.example, methods: [PUT]}\n"
               "    preimage: {method: GET, url: '${request.url}'}\n    when: pre.status == 200\n"
               "    class: irreversible\n    reason: test\n")
    later = PACK.replace("version: 1\nrules:\n", "").replace("{guard}\n", "    when: pre.status == 404\n")
    rules, problems = check_pack_text(earlier + later, "mine.yaml")
    assert len(rules) == 2 and not [p for p in problems if p.severity == "error"]
    other = later.replace("methods: [PUT]", "methods: [DELETE]")
    assert any("reads 'pre'" in p.message for p in check_pack_text(earlier + other, "mine.yaml")[1])


def test_a_template_reads_an_escaped_quote_inside_a_string_as_part_of_it() -> None:
    from goex_proxy.undo.rules import parse_template

    template = parse_template('q=${"say \\"}\\" " + request.path}!')
    assert template.render({"request": {"path": "/x"}}) == 'q=say "}" /x!'


def test_a_guard_read_shows_its_content_type() -> None:
    from goex_proxy.undo.run import response_view

    assert response_view(200, [("Content-Type", "Text/Calendar; charset=utf-8")], ICS)["content_type"] == "text/calendar"


# --- what a red team found ---------------------------------------------------------------------------------------

ID_ONLY = """version: 1
rules:
  - name: edit a note
    match: {host: notes.example, methods: [PUT]}
    preimage: {method: GET, url: "${request.url}"}
    when: pre.status == 200
    class: needs-preimage
    guard: {read: {method: GET, url: "${request.url}"}, expect: 'read.status == 200 && read.json.GUARDED'}
    undo:
      - {method: PUT, url: "${request.url}", body: "${pre.body}"}
"""
JSON = (("Content-Type", "application/json"),)
EDIT = Exchange("PUT", "https://notes.example/n/7", JSON, b'{"text": "agent"}', 200, JSON,
                b'{"id": 7, "text": "agent", "draft": {"id": "d1", "rev": 3}}', 200, JSON, b'{"id": 7, "text": "before"}')


@pytest.mark.parametrize(("expect", "guarded"), [
    ("id == response.json.id", False),                       # a person's edit keeps the id: guards nothing
    ("draft.id == response.json.draft.id", False),
    ("text == response.json.text", False),                   # one field of three: an edit of another passes
    ("draft.rev == response.json.draft.rev", True),           # a version field: every edit changes it
])
def test_a_guard_comparing_fields_an_edit_keeps_is_unguarded(expect: str, guarded: bool) -> None:
    rules, problems = check_pack_text(ID_ONLY.replace("GUARDED", expect), "mine.yaml")
    assert rules and not problems, problems
    assert classify(rules, EDIT) == ("needs-preimage" if guarded else UNGUARDED)


def test_a_guard_names_the_fields_its_server_changes_on_every_edit() -> None:
    text = ID_ONLY.replace("GUARDED", "draft.id == response.json.draft.id").replace(
        "expect: 'read", "changes_with: [draft.id], expect: 'read")
    rules, problems = check_pack_text(text, "mine.yaml")
    assert rules and not problems, problems
    assert classify(rules, EDIT) == "needs-preimage"


def test_a_created_resource_at_an_url_made_from_its_id_is_not_believed_gone_on_a_404() -> None:
    job = Exchange("POST", "https://api.example/v1/exports", JSON, b"{}", 201, JSON, b'{"id": 12}')
    p = plan("R1", job, REST)
    assert [s.describe() for s in p.steps] == ["DELETE https://api.example/v1/exports/12"]
    assert not guard_holds(p, read(404, b"")) and guard_holds(p, read(200, b'{"id": 12}', "application/json"))
    located = Exchange("POST", "https://api.example/v1/exports", JSON, b"{}", 201,
                       JSON + (("Location", "/v1/exports/12"),), b'{"id": 12}')
    assert guard_holds(plan("R1", located, REST), read(404, b""))


@pytest.mark.parametrize(("url", "before"), [
    ("https://api.example/users/5/avatar", b'{"url": "https://img.example/a.png"}'),   # a sub-resource
    ("https://api.example/posts/7", b'{"title": "no id in it"}'),                      # a POST could not bring back 7
])
def test_a_deleted_json_resource_not_named_by_its_id_is_put_back_at_its_url(url: str, before: bytes) -> None:
    gone = Exchange("DELETE", url, (), None, 204, (), b"", 200, JSON, before)
    p = plan("R1", gone, REST)
    assert p.rule == "rest/delete a resource at its own URL"
    assert [(s.method, s.url, s.body, dict(s.headers).get("If-None-Match")) for s in p.steps] == [("PUT", url, before, "*")]


CHECKED = """version: 1
rules:
  - name: r
    match: {host: notes.example, methods: [PUT]}
    class: exact
RULE"""


@pytest.mark.parametrize(("rule", "message"), [
    ("    guard: {read: {method: DELETE, url: '${request.url}'}, expect: 'read.status == 404'}\n"
     "    undo: [{method: DELETE, url: '${request.url}'}]\n", "'rules[0].guard.read' must be a GET or HEAD"),
    ("    preimage: {method: HEAD, url: '${request.url}'}\n    guard: {unneeded: test}\n"
     "    undo: [{method: PUT, url: '${request.url}', body: '${pre.body}'}]\n",
     "'rules[0].undo' reads the pre-image's body, but its 'preimage' read is a HEAD"),
])
def test_policy_check_refuses_a_guard_that_writes_and_a_body_a_head_never_has(rule: str, message: str) -> None:
    rules, problems = check_pack_text(CHECKED.replace("RULE", rule), "mine.yaml")
    assert not rules and any(message in p.message for p in problems if p.severity == "error"), problems


def test_if_none_match_with_an_etag_is_no_guard() -> None:
    rule = ("    undo: [{method: DELETE, url: '${request.url}', headers: {If-None-Match: "
            "'${response.headers[\"etag\"]}'}}]\n")
    rules, problems = check_pack_text(CHECKED.replace("RULE", rule), "mine.yaml")
    assert [p.severity for p in problems] == ["warning"]
    tagged = Exchange("PUT", "https://notes.example/n/1", (), b"x", 201, (("ETag", '"n1"'),), b"")
    assert classify(rules, tagged) == UNGUARDED


def test_a_body_nested_past_the_parsers_depth_is_not_json_and_plans_without_a_crash() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    created = Exchange("POST", "https://api.example/posts", JSON, deep, 201, JSON, deep)
    assert classify(REST, created) == "no rule" and plan("R1", created, REST).verdict == "no rule"


def test_a_format_precision_from_data_cannot_build_gigabytes() -> None:
    from goex_proxy.policy.cel import CelEvalError, compile_expression
    from goex_proxy.undo.plan import UNDO_VARIABLES

    with pytest.raises(CelEvalError, match="precision 100000000 is more than 100"):
        compile_expression('request.json.f.format([1.5])', UNDO_VARIABLES).evaluate(
            {"request": {"json": {"f": "%.100000000f"}}})


# --- what a second red team found ---------------------------------------------------------------------------------

PACKS = load_packs([undo_dir() / f"{n}.yaml" for n in ("gmail", "github", "s3", "slack", "rest")])
XML = (("Content-Type", "application/xml"),)


def lifecycle(*rules: tuple[str, int, str]) -> bytes:
    return ('<LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' + "".join(
        f"<Rule><ID>{i}</ID><Filter><Prefix>{i}/</Prefix></Filter><Status>{status}</Status>"
        f"<Expiration><Days>{days}</Days></Expiration></Rule>" for i, days, status in rules)
        + "</LifecycleConfiguration>").encode()


def test_an_s3_configuration_guard_counts_each_element_so_one_changed_value_is_a_conflict() -> None:
    agents = lifecycle(("logs", 30, "Enabled"), ("tmp", 30, "Enabled"), ("old", 7, "Disabled"))
    change = Exchange("PUT", "https://bkt1.s3.amazonaws.com/?lifecycle", XML, agents, 200, (), b"", 200, XML,
                      lifecycle(("logs", 365, "Enabled")))
    p = plan("R1", change, PACKS)
    assert (p.rule, p.fidelity) == ("s3/change a bucket's configuration", "needs-preimage")
    assert guard_holds(p, read(200, agents, "application/xml"))
    for persons in (lifecycle(("logs", 30, "Enabled"), ("tmp", 30, "Disabled"), ("old", 7, "Disabled")),
                    lifecycle(("logs", 7, "Enabled"), ("tmp", 30, "Enabled"), ("old", 7, "Disabled"))):
        assert not guard_holds(p, read(200, persons, "application/xml"))   # a value already elsewhere in it


def test_a_delete_on_a_suspended_bucket_is_put_back_from_the_pre_image_not_by_deleting_the_null_version() -> None:
    gone = Exchange("DELETE", "https://bkt1.s3.amazonaws.com/report.csv", (), None, 204,
                    (("x-amz-delete-marker", "true"), ("x-amz-version-id", "null")), b"", 200,
                    (("Content-Type", "text/csv"),), b"a,b\n")
    p = plan("R1", gone, PACKS)
    assert p.rule == "s3/delete object, unversioned bucket" and not p.unguarded
    assert [(s.describe(), s.body, dict(s.headers).get("If-None-Match")) for s in p.steps] == [
        ("PUT https://bkt1.s3.amazonaws.com/report.csv", b"a,b\n", "*")]


ID_GUARDED = """version: 1
rules:
  - name: create a note
    match: {host: notes.example, methods: [POST], path: /notes}
    class: exact
    guard: {read: {method: GET, url: "${request.url}/${response.json.id}"}, expect: 'EXPECT'}
    undo:
      - {method: DELETE, url: "${request.url}/${response.json.id}"}
"""


@pytest.mark.parametrize(("expect", "guarded"), [
    ("read.status == 200 && read.json.id == response.json.id", False),        # a rename keeps the id
    ("read.status == 200 && read.json.title == response.json.title", True),
])
def test_a_delete_guarded_only_by_the_resources_id_is_unguarded(expect: str, guarded: bool) -> None:
    rules, problems = check_pack_text(ID_GUARDED.replace("EXPECT", expect), "mine.yaml")
    assert rules and not problems, problems
    made = Exchange("POST", "https://notes.example/notes", JSON, b'{"title": "t"}', 201, JSON,
                    b'{"id": 7, "title": "t", "owner_id": 3}')
    assert classify(rules, made) == ("exact" if guarded else UNGUARDED)


def test_a_label_delete_answered_404_is_no_undo_since_a_person_may_have_renamed_it() -> None:
    made = Exchange("POST", "https://api.github.com/repos/o/r/labels", JSON, b'{"name": "triage"}', 201, JSON,
                    b'{"id": 1, "name": "triage", "color": "fff"}')
    p = plan("R1", made, PACKS)
    assert p.rule == "github/create a label" and p.steps[0].success is not None
    assert not p.steps[0].success.evaluate({**p.variables, "response": read(404, b"")})


@pytest.mark.parametrize(("message", "rule", "guarded_by_read"), [
    ({"text": "hi", "ts": "1.000001", "bot_id": "B1"}, "slack/post a message as an app", False),
    ({"text": "hi", "ts": "1.000001", "user": "U1"}, "slack/post a message", True),   # a user token: the person's
])
def test_a_slack_message_posted_with_a_user_token_is_deleted_only_while_it_reads_as_posted(
        message: dict[str, str], rule: str, guarded_by_read: bool) -> None:
    posted = Exchange("POST", "https://slack.com/api/chat.postMessage", JSON, b'{"channel": "C1", "text": "hi"}',
                      200, JSON, json.dumps({"ok": True, "channel": "C1", "ts": "1.000001", "message": message}).encode())
    p = plan("R1", posted, PACKS)
    assert p.rule == rule and p.fidelity == "exact" and (p.guard is not None) == guarded_by_read
    if guarded_by_read:
        history = {"ok": True, "messages": [{"ts": "1.000001", "text": "hi"}]}
        assert guard_holds(p, read(200, json.dumps(history).encode(), "application/json"))
        history["messages"][0]["text"] = "hi, edited by the person"
        assert not guard_holds(p, read(200, json.dumps(history).encode(), "application/json"))
