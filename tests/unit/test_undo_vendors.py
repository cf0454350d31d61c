"""The vendor packs on servers nobody here wrote: any 2xx is success, compensations are addressed from the request's
path and the resource's id (never from a `url` an answer may leave out), a pre-image that was not found (or that
Slack refused) falls to a rule saying why, never to the generic REST pack, and guards fail on a later change."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from goex_proxy.presets import undo_dir
from goex_proxy.undo.plan import Exchange, classify, plan, preimage_read
from goex_proxy.undo.rules import load_packs

PACKS = load_packs([undo_dir() / f"{n}.yaml" for n in ("github", "gmail", "slack", "s3", "rest")])
GH = "https://api.github.com/repos/octo/hello"
GMAIL = "https://gmail.googleapis.com/gmail/v1/users/me"
JSON = (("Content-Type", "application/json; charset=utf-8"),)


def exchange(method: str, url: str, body: Any = None, status: int = 200, answer: Any = None,
             pre_status: int | None = None, pre: Any = None) -> Exchange:
    def raw(value: Any) -> bytes | None:
        return None if value is None else json.dumps(value).encode()

    return Exchange(method, url, JSON if body is not None else (), raw(body), status, JSON if answer is not None else (),
                    raw(answer) or b"", pre_status, JSON if pre is not None else (), raw(pre))


def read(status: int, body: Any) -> dict[str, Any]:
    from goex_proxy.undo.run import response_view

    return response_view(status, JSON, json.dumps(body).encode())


@pytest.mark.parametrize(("created", "status"), [(True, 201), (True, 200), (False, 200)])
def test_a_file_put_is_told_create_or_update_by_its_sha_not_by_its_status(created: bool, status: int) -> None:
    """GitHub answers 201 for a created file and 200 for an updated one, but a server may answer 200 to both: the
    request says which it was (an update must carry the blob `sha` it replaces)."""
    body: dict[str, Any] = {"message": "m", "content": "aGk="} | ({} if created else {"sha": "old"})
    answer = {"content": {"path": "a.md", "sha": "new"}, "commit": {"sha": "c1"}}
    ex = exchange("PUT", f"{GH}/contents/a.md", body, status, answer,
                  None if created else 200, None if created else {"content": "b2xk\n", "encoding": "base64"})
    assert (preimage_read(PACKS, ex) is None) == created
    p = plan("R", ex, PACKS)
    assert p.rule == ("github/create a file" if created else "github/change a file") and p.verdict == "plan"
    assert json.loads(p.steps[0].body or b"")["sha"] == "new"       # the agent's blob: GitHub refuses it if stale


def test_urls_come_from_the_request_path_and_the_resources_id_not_from_url_fields() -> None:
    """Answers without any `url` (or Location): the comment, issue, label and branch are still found."""
    comment = plan("R", exchange("POST", f"{GH}/issues/5/comments", {"body": "hi"}, 201, {"id": 77, "body": "hi"}), PACKS)
    assert [s.describe() for s in comment.steps] == [f"DELETE {GH}/issues/comments/77"]
    issue = plan("R", exchange("POST", f"{GH}/issues", {"title": "t"}, 201, {"id": 1, "number": 12}), PACKS)
    assert [s.describe() for s in issue.steps] == [f"PATCH {GH}/issues/12"]
    label = plan("R", exchange("POST", f"{GH}/labels", {"name": "needs triage#1", "color": "ff0000"}, 201,
                               {"id": 3, "name": "needs triage#1", "color": "ff0000", "description": None}), PACKS)
    assert [s.describe() for s in label.steps] == [f"DELETE {GH}/labels/needs%20triage%231"]
    branch = plan("R", exchange("POST", f"{GH}/git/refs", {"ref": "refs/heads/x/y", "sha": "abc"}, 201,
                                {"ref": "refs/heads/x/y", "object": {"sha": "abc"}}), PACKS)
    assert [s.describe() for s in branch.steps] == [f"DELETE {GH}/git/refs/heads/x/y"]
    assert branch.guard is not None and branch.guard.describe() == f"GET {GH}/git/ref/heads/x/y"   # the documented read


@pytest.mark.parametrize("form", ["refs", "ref"])
def test_a_ref_changed_at_either_address_is_read_at_the_documented_one(form: str) -> None:
    url = f"{GH}/git/{form}/heads/main"
    step = preimage_read(PACKS, Exchange("PATCH", url))
    assert step is not None and step.describe() == f"GET {GH}/git/ref/heads/main"
    p = plan("R", exchange("PATCH", url, {"sha": "new"}, 200, {"ref": "refs/heads/main", "object": {"sha": "new"}},
                           200, {"ref": "refs/heads/main", "object": {"sha": "old"}}), PACKS)
    assert [s.describe() for s in p.steps] == [f"PATCH {url}"] and json.loads(p.steps[0].body or b"")["sha"] == "old"


@pytest.mark.parametrize(("method", "url", "body"), [
    ("PATCH", f"{GH}/issues/9", {"title": "x"}),
    ("DELETE", f"{GH}/labels/gone", None),
    ("DELETE", f"{GH}/git/refs/heads/gone", None),
    ("PUT", f"{GMAIL}/drafts/r1", {"message": {"raw": "eA"}}),
    ("DELETE", f"{GMAIL}/labels/Label_9", None),
    ("POST", f"{GMAIL}/threads/t9/modify", {"addLabelIds": ["STARRED"]}),
])
def test_a_pre_image_that_was_not_found_says_why_and_never_reaches_the_rest_pack(method: str, url: str,
                                                                                  body: Any) -> None:
    """The proxy read the resource before the call and found nothing (404): the call most likely failed too (not
    effective); if it worked anyway (the resource appeared in between), nothing is known to restore it to."""
    missing = {"message": "Not Found"}
    failed = exchange(method, url, body, 404, missing, 404, missing)
    assert classify(PACKS, failed) == "not effective"
    raced = exchange(method, url, body, 200, {"id": "x"}, 404, missing)
    label = classify(PACKS, raced)
    assert label.startswith("irreversible: the resource was not found when the proxy read it"), label
    assert plan("R", raced, PACKS).rule.split("/")[0] in ("github", "gmail")   # type: ignore[union-attr]


def test_a_pre_image_slack_refused_falls_to_the_rule_that_says_so() -> None:
    rename = exchange("POST", "https://slack.com/api/conversations.rename", {"channel": "C1", "name": "x"}, 200,
                      {"ok": True, "channel": {"id": "C1", "name": "x"}}, 200, {"ok": False, "error": "missing_scope"})
    assert classify(PACKS, rename).startswith("irreversible: Slack did not give the proxy what the call changes")
    assert classify(PACKS, replace(rename, response_body=b'{"ok": false, "error": "name_taken"}')) == "not effective"


@pytest.mark.parametrize(("ex", "label"), [
    (exchange("DELETE", f"{GMAIL}/labels/Label_1", None, 200, {}, 200, {"id": "Label_1", "name": "Old"}), "lossy"),
    (exchange("DELETE", f"{GMAIL}/drafts/r1", None, 200, {}, 200, {"id": "r1", "message": {"raw": "eA"}}),
     "needs-preimage"),
    (exchange("POST", f"{GH}/labels", {"name": "a", "color": "ffffff"}, 200,
              {"id": 1, "name": "a", "color": "ffffff", "description": None}), "exact"),
    (exchange("DELETE", f"{GH}/issues/comments/4", None, 200, {}, 200,
              {"id": 4, "body": "b", "issue_url": f"{GH}/issues/1"}), "lossy"),
])
def test_any_2xx_is_success(ex: Exchange, label: str) -> None:
    """The docs give a delete no status (Gmail: "the response body is empty") or one that servers vary (204 or 200):
    the call took effect all the same."""
    assert classify(PACKS, ex) == label
    assert plan("R", ex, PACKS).verdict == "plan"


def test_an_issue_guard_compares_only_what_undo_writes_back() -> None:
    """Undoing a retitle checks the title is still the agent's; a label someone added since is no conflict (undo
    does not touch labels), a title someone changed since is."""
    answer = {"number": 1, "title": "agent's", "body": "b", "state": "open", "labels": [], "assignees": []}
    pre = {**answer, "title": "before", "milestone": None}
    p = plan("R", exchange("PATCH", f"{GH}/issues/1", {"title": "agent's"}, 200, answer, 200, pre), PACKS)
    assert p.guard_expect is not None and not p.unguarded
    labelled = {**answer, "labels": [{"name": "bug"}]}
    assert p.guard_expect.evaluate({**p.variables, "read": read(200, labelled)})
    assert not p.guard_expect.evaluate({**p.variables, "read": read(200, {**answer, "title": "a person's"})})
    assert json.loads(p.steps[0].body or b"") == {"title": "before"}


def test_a_thread_whose_messages_differed_gets_its_one_label_back_message_by_message() -> None:
    """Archiving a thread with a sent reply: only the message that was in the inbox goes back to it."""
    pre = {"id": "t1", "messages": [{"id": "m1", "labelIds": ["INBOX", "UNREAD"]}, {"id": "m2", "labelIds": ["SENT"]}]}
    after = {"id": "t1", "messages": [{"id": "m1", "labelIds": ["UNREAD"]}, {"id": "m2", "labelIds": ["SENT"]}]}
    p = plan("R", exchange("POST", f"{GMAIL}/threads/t1/modify", {"removeLabelIds": ["INBOX"]}, 200, after, 200, pre),
             PACKS)
    assert [(s.describe(), json.loads(s.body or b"")) for s in p.steps] == [
        (f"POST {GMAIL}/messages/batchModify", {"ids": ["m1"], "addLabelIds": ["INBOX"]})]
    assert p.guard_expect is not None and p.guard_expect.evaluate({**p.variables, "read": read(200, after)})
    replied = {"id": "t1", "messages": [*after["messages"], {"id": "m3", "labelIds": ["INBOX"]}]}
    assert not p.guard_expect.evaluate({**p.variables, "read": read(200, replied)})   # a reply came in since


REPO_ANSWER = {"id": 7, "name": "scratch", "full_name": "octocat/scratch", "private": False, "description": None,
               "archived": False, "default_branch": "main", "pushed_at": "2024-01-01T00:00:00Z",
               "updated_at": "2024-01-01T00:00:00Z", "open_issues_count": 0}


@pytest.mark.parametrize(("change", "holds"), [
    ({}, True),
    ({"updated_at": "2024-01-02T00:00:00Z"}, False),                                   # settings changed
    ({"updated_at": "2024-01-02T00:00:00Z", "description": "a person's"}, False),
    ({"pushed_at": "2024-01-02T00:00:00Z"}, False),                                    # someone pushed
    ({"open_issues_count": 1}, False),                                                 # an issue opened
])
def test_a_created_repository_is_deleted_only_as_the_agent_left_it(change: dict[str, Any], holds: bool) -> None:
    p = plan("R", exchange("POST", "https://api.github.com/user/repos", {"name": "scratch"}, 201, REPO_ANSWER), PACKS)
    assert p.verdict == "plan" and not p.unguarded and p.guard_expect is not None
    assert p.guard_expect.evaluate({**p.variables, "read": read(200, {**REPO_ANSWER, **change})}) == holds


def test_a_404_for_a_created_repository_says_nothing_and_its_delete_counts_only_on_2xx() -> None:
    """GitHub answers 404 to a credential that cannot see a repository: undo must not call that "already gone"."""
    p = plan("R", exchange("POST", "https://api.github.com/user/repos", {"name": "scratch"}, 201, REPO_ANSWER), PACKS)
    gone = {**p.variables, "read": read(404, {"message": "Not Found"})}
    assert p.guard_refused is not None and p.guard_refused.evaluate(gone)
    assert p.guard_expect is not None and not p.guard_expect.evaluate(gone)
    rule = next(r for r in PACKS if r.pack == "github" and r.name == "create a repository")
    success = rule.undo[0].success
    assert success is not None
    assert success.evaluate({**p.variables, "response": read(204, {})})
    assert not success.evaluate({**p.variables, "response": read(404, {"message": "Not Found"})})


def test_a_created_label_is_deleted_only_while_no_issue_carries_it() -> None:
    """Deleting a label takes it off every issue: the guard asks GitHub's issue filter for any issue or pull request
    with it (the name encoded for a query), and finds none."""
    name = "needs triage & more+1"
    p = plan("R", exchange("POST", f"{GH}/labels", {"name": name, "color": "ff0000"}, 201,
                           {"id": 3, "name": name, "color": "ff0000", "description": None}), PACKS)
    assert p.rule == "github/create a label" and p.verdict == "plan" and not p.unguarded
    assert p.guard is not None and p.guard.describe() == (
        f"GET {GH}/issues?labels=needs%20triage%20%26%20more%2B1&state=all&per_page=1")
    assert p.guard_expect is not None and p.guard_expect.evaluate({**p.variables, "read": read(200, [])})
    carried = read(200, [{"number": 1, "labels": [{"name": name}]}])
    assert not p.guard_expect.evaluate({**p.variables, "read": carried})
    assert p.guard_refused is not None and p.guard_refused.evaluate({**p.variables, "read": read(404, {})})


def test_a_label_whose_name_has_a_comma_is_checked_by_reading_the_label() -> None:
    """GitHub's `labels` filter splits on commas, so such a name cannot be asked about alone."""
    p = plan("R", exchange("POST", f"{GH}/labels", {"name": "a,b", "color": "ff0000"}, 201,
                           {"id": 3, "name": "a,b", "color": "ff0000", "description": None}), PACKS)
    assert p.rule == "github/create a label whose name has a comma" and not p.unguarded
    assert p.guard is not None and p.guard.describe() == f"GET {GH}/labels/a,b"


RELEASE = {"id": 5, "tag_name": "v1", "name": "v1", "body": "notes", "draft": False, "prerelease": False,
           "assets": []}


@pytest.mark.parametrize("tag_exists", [True, False])
def test_a_created_release_is_deleted_only_with_no_assets_added_since(tag_exists: bool) -> None:
    ex = exchange("POST", f"{GH}/releases", {"tag_name": "v1", "name": "v1", "body": "notes"}, 201, RELEASE,
                  200 if tag_exists else 404,
                  {"ref": "refs/tags/v1", "object": {"sha": "abc"}} if tag_exists else {"message": "Not Found"})
    p = plan("R", ex, PACKS)
    assert p.verdict == "plan" and not p.unguarded and p.guard_expect is not None
    assert p.guard_expect.evaluate({**p.variables, "read": read(200, RELEASE)})
    uploaded = {**RELEASE, "assets": [{"id": 9, "name": "app.zip", "size": 1024, "updated_at": "2024-01-02T00:00:00Z"}]}
    assert not p.guard_expect.evaluate({**p.variables, "read": read(200, uploaded)})
    # A tag the release created is left alone: nothing read shows whether someone moved it since.
    assert [s.describe() for s in p.steps] == [f"DELETE {GH}/releases/5"]
    assert p.fidelity == ("exact" if tag_exists else "lossy")
