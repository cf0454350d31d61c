"""`goex-proxy undo` with the GitHub pack against the GitHub fake: a session taken back (files by new commits that
carry the agent's blob sha), and GitHub's 409 on a stale sha reported as a conflict with nothing overwritten."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

POLICY = {"github": """
    version: 1
    rules:
      - name: the agent's repositories
        allow: {host: api.github.com, paths: ["/repos/octo/**", "/repos/octocat/**", /user/repos]}
"""}
REPO = "octo/hello"

AGENT = """
import base64, json, sys, requests
api = "https://api.github.com"
seeded = json.loads(sys.argv[1])
def call(method, path, **body):
    r = requests.request(method, api + path, json=body or None, timeout=20)
    assert r.status_code < 300, (method, path, r.status_code, r.text)
    return r.json() if r.content else None
def sha(path):
    return call("GET", "/repos/octo/hello/contents/" + path)["sha"]
b64 = lambda text: base64.b64encode(text.encode()).decode()
repo = "/repos/octo/hello"
call("POST", "/user/repos", name="agent-scratch")
call("POST", repo + "/issues", title="agent's issue", body="found a bug")
call("PATCH", repo + "/issues/1", title="renamed by the agent", state="closed")
call("POST", repo + "/issues/1/comments", body="agent was here")
call("PATCH", repo + "/issues/comments/" + seeded["first"], body="first, edited by the agent")
call("DELETE", repo + "/issues/comments/" + seeded["second"])
call("POST", repo + "/labels", name="agent", color="ff0000")
call("PATCH", repo + "/labels/triage", new_name="triaged", color="00ff00")
call("DELETE", repo + "/labels/unused")
call("POST", repo + "/issues/1/labels", labels=["wontfix"])
call("POST", repo + "/git/refs", ref="refs/heads/agent-branch", sha=seeded["main"])
call("PUT", repo + "/contents/docs/new.md", message="add docs", content=b64("new doc"))
call("PUT", repo + "/contents/README.md", message="rewrite readme", content=b64("# by the agent"), sha=sha("README.md"))
call("DELETE", repo + "/contents/notes.txt", message="drop notes", sha=sha("notes.txt"))
"""


def gh(upstream: Any, method: str, path: str, **body: Any) -> Any:
    """Set the fake up through its own API, as a person would."""
    status, payload, _ = upstream.state.github.handle(method, path, {}, body)
    assert status < 300, payload
    return payload


@pytest.fixture
def seeded(upstream) -> dict[str, str]:
    github = upstream.state.github
    github.seed_file(REPO, "notes.txt", b"remember the milk\n")
    for name, color in (("triage", "aaaaaa"), ("unused", "bbbbbb"), ("wontfix", "cccccc")):
        gh(upstream, "POST", f"/repos/{REPO}/labels", name=name, color=color)
    gh(upstream, "POST", f"/repos/{REPO}/issues", title="a real bug", body="steps to reproduce", labels=["triage"])
    first = gh(upstream, "POST", f"/repos/{REPO}/issues/1/comments", body="first")
    second = gh(upstream, "POST", f"/repos/{REPO}/issues/1/comments", body="second")
    return {"first": str(first["id"]), "second": str(second["id"]), "main": github.head(REPO)}


def test_a_github_session_is_undone(make_proxy, upstream, seeded):
    github = upstream.state.github
    before = github.snapshot(refs=False)
    proxy = make_proxy(POLICY)
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT, json.dumps(seeded))
    assert r.returncode == 0, r.stderr
    writes = [row for row in proxy.rows() if row["method"] != "GET"]
    assert [row["undo_class"] for row in writes] == [
        "exact", "lossy", "needs-preimage", "exact", "needs-preimage", "lossy", "exact", "needs-preimage", "lossy",
        "needs-preimage", "exact", "exact", "needs-preimage", "needs-preimage"]

    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "session of mailbot: 14 undone" in r.stdout

    after = github.snapshot(refs=False)
    assert "octocat/agent-scratch" not in after
    agents_issue = after[REPO]["issues"].pop(2)
    assert agents_issue["state"] == "closed"   # issues cannot be deleted: closed as not planned
    assert after == before
    assert "refs/heads/agent-branch" not in github.snapshot()[REPO]["refs"]
    assert github.file(REPO, "README.md") == b"# hello\n" and github.file(REPO, "notes.txt") == b"remember the milk\n"


def test_a_file_changed_after_the_agent_is_a_conflict_and_is_kept(make_proxy, upstream, seeded):
    github = upstream.state.github
    proxy = make_proxy(POLICY)
    agent = ("import base64, requests\n"
             "u = 'https://api.github.com/repos/octo/hello/contents/README.md'\n"
             "sha = requests.get(u, timeout=20).json()['sha']\n"
             "r = requests.put(u, json={'message': 'm', 'content': base64.b64encode(b'# agent').decode(), 'sha': sha},"
             " timeout=20)\n"
             "assert r.status_code == 200, r.text\n")
    r = proxy.exec("mailbot", sys.executable, "-c", agent)
    assert r.returncode == 0, r.stderr
    github.seed_file(REPO, "README.md", b"# a person's fix\n")     # someone commits after the agent
    put = next(row for row in proxy.rows() if row["method"] == "PUT")

    r = proxy.cli("undo", str(put["id"]), "--yes")
    assert r.returncode == 3 and "conflict" in r.stderr and "(409)" in r.stderr, r.stdout + r.stderr
    assert github.file(REPO, "README.md") == b"# a person's fix\n"
    compensation = next(row for row in proxy.rows() if row["undo_of"] == put["id"])
    sent = json.loads(compensation["req_body"])
    assert sent["sha"] == json.loads(put["resp_body"])["content"]["sha"]   # the agent's blob: stale now
    assert base64.b64decode(sent["content"]) == b"# hello\n"


VARIANT_AGENT = """
import base64, json, sys, requests
api = "https://api.github.com/repos/octo/hello"
shas = json.loads(sys.argv[1])
def call(method, path, **body):
    r = requests.request(method, api + path, json=body or None, timeout=20)
    assert r.status_code < 300, (method, path, r.status_code, r.text)
    return r
call("POST", "/issues", title="agent's issue")
call("POST", "/issues/1/comments", body="agent was here")
call("POST", "/labels", name="needs triage", color="ff0000")
call("PUT", "/contents/docs/new.md", message="add docs", content=base64.b64encode(b"new doc").decode())
call("POST", "/git/refs", ref="refs/heads/agent", sha=shas["old"])
call("PATCH", "/git/ref/heads/agent", sha=shas["main"])          # the singular form GitHub also answers
call("DELETE", "/git/ref/heads/doomed")
"""


def test_undo_holds_when_creates_answer_200_and_no_answer_says_where_the_resource_is(make_proxy, upstream, seeded):
    """A server within the docs' latitude: 200 where GitHub documents 201 (as its own file API does for the same
    PUT), no `url` fields and no Location, and refs changed at `git/ref/{ref}`. Every compensation is addressed from
    the request's path and the resource's id, so the session is still undone exactly."""
    github = upstream.state.github
    old = github.head(REPO)
    main = github.seed_file(REPO, "notes.txt", b"remember the eggs\n")
    gh(upstream, "POST", f"/repos/{REPO}/git/refs", ref="refs/heads/doomed", sha=old)
    before = github.snapshot(refs=False)    # (the file's commit and its undo move main on)
    github.created_as_200 = github.omit_urls = True
    proxy = make_proxy(POLICY)
    r = proxy.exec("mailbot", sys.executable, "-c", VARIANT_AGENT, json.dumps({"old": old, "main": main}))
    assert r.returncode == 0, r.stderr
    writes = [row for row in proxy.rows() if row["method"] != "GET"]
    assert all(row["status"] == 200 or row["method"] in ("PATCH", "DELETE") for row in writes)
    assert all(b'"url"' not in (row["resp_body"] or b"") for row in writes)
    assert [row["undo_class"] for row in writes] == [
        "lossy", "exact", "exact", "exact", "exact", "needs-preimage", "needs-preimage"]

    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "session of mailbot: 7 undone" in r.stdout
    after = github.snapshot(refs=False)
    assert after[REPO]["issues"].pop(2)["state"] == "closed"
    assert after == before
    refs = github.snapshot()[REPO]["refs"]
    assert "refs/heads/agent" not in refs and refs["refs/heads/doomed"] == old


CREATOR = """
import requests
for path, body in (("/user/repos", {"name": "agent-scratch"}), ("/repos/octo/hello/labels", {"name": "agent"})):
    r = requests.post("https://api.github.com" + path, json=body, timeout=20)
    assert r.status_code == 201, r.text
"""


def test_what_a_person_did_after_the_agent_is_a_conflict_and_nothing_is_deleted(make_proxy, upstream, seeded):
    """A repository the agent created and whose description a person then set (GitHub moves its `updated_at`), and
    a label the agent created that a person then put on an issue: deleting either would destroy their work."""
    github = upstream.state.github
    proxy = make_proxy(POLICY)
    r = proxy.exec("mailbot", sys.executable, "-c", CREATOR)
    assert r.returncode == 0, r.stderr
    repo_row, label_row = [row for row in proxy.rows() if row["method"] == "POST"]
    gh(upstream, "PATCH", "/repos/octocat/agent-scratch", description="a person's project now")
    gh(upstream, "POST", f"/repos/{REPO}/issues/1/labels", labels=["agent"])

    for row in (repo_row, label_row):
        r = proxy.cli("undo", str(row["id"]), "--yes")
        assert r.returncode == 3 and "conflict" in r.stderr, r.stdout + r.stderr
    after = github.snapshot(refs=False)
    assert after["octocat/agent-scratch"]["description"] == "a person's project now"
    assert "agent" in after[REPO]["labels"] and "agent" in after[REPO]["issues"][1]["labels"]
    assert not [row for row in proxy.rows() if row["undo_of"] and row["method"] != "GET"]   # nothing was sent but reads


def test_a_created_repository_the_check_cannot_see_is_not_reported_undone(make_proxy, upstream, seeded):
    """GitHub answers 404 for a repository the credential cannot see as for one that is gone: here a person renamed
    it, and undo fails saying so instead of calling it undone (the repository is still there)."""
    github = upstream.state.github
    proxy = make_proxy(POLICY)
    r = proxy.exec("mailbot", sys.executable, "-c", CREATOR)
    assert r.returncode == 0, r.stderr
    repo_row = next(row for row in proxy.rows() if row["method"] == "POST")
    gh(upstream, "PATCH", "/repos/octocat/agent-scratch", name="kept")

    r = proxy.cli("undo", str(repo_row["id"]), "--yes")
    assert r.returncode not in (0, 3) and "404" in r.stdout + r.stderr, r.stdout + r.stderr
    assert "octocat/kept" in github.snapshot()
    assert not [row for row in proxy.rows() if row["undo_of"] and row["method"] != "GET"]
