"""The GitHub fake keeps real state and refuses stale writes the way GitHub does (what undo tests rely on)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.fake_github import GitHubFake

REPO = "/repos/octo/hello"


@pytest.fixture
def gh() -> GitHubFake:
    return GitHubFake()


def call(gh: GitHubFake, method: str, path: str, body: dict[str, Any] | None = None,
         query: dict[str, str] | None = None) -> tuple[int, Any]:
    """Paths not starting /repos/, /user/ or /orgs/ are relative to octo/hello."""
    full = path if path.startswith(("/repos/", "/user/", "/orgs/")) else REPO + path
    status, payload, _ = gh.handle(method, full, query or {}, body or {})
    return status, payload


def put(gh: GitHubFake, path: str, data: bytes, **extra: Any) -> tuple[int, Any]:
    return call(gh, "PUT", f"/contents/{path}", {"message": "m", "content": base64.b64encode(data).decode(), **extra})


def test_contents_sha_is_the_git_blob_sha_and_content_is_wrapped_at_60(gh: GitHubFake) -> None:
    gh.seed_file("octo/hello", "hello.txt", b"hello\n")
    status, body = call(gh, "GET", "/contents/hello.txt")
    assert status == 200
    assert body["sha"] == "ce013625030ba8dba906f756967f9e9ca394464a"   # `printf 'hello\n' | git hash-object --stdin`
    assert (body["type"], body["encoding"], body["size"]) == ("file", "base64", 6)
    gh.seed_file("octo/hello", "big.bin", bytes(range(256)))
    content = call(gh, "GET", "/contents/big.bin")[1]["content"]
    lines = content.split("\n")
    assert lines[-1] == "" and all(len(line) == 60 for line in lines[:-2]) and 0 < len(lines[-2]) <= 60
    assert base64.b64decode(content) == bytes(range(256))


def test_create_is_201_update_with_current_sha_is_200_and_moves_the_branch(gh: GitHubFake) -> None:
    head = gh.head("octo/hello")
    status, created = put(gh, "notes.md", b"one")
    assert status == 201 and created["content"]["path"] == "notes.md"
    assert created["commit"]["parents"][0]["sha"] == head and gh.head("octo/hello") == created["commit"]["sha"]
    status, updated = put(gh, "notes.md", b"two", sha=created["content"]["sha"])
    assert status == 200
    assert gh.file("octo/hello", "notes.md") == b"two"
    assert gh.file("octo/hello", "notes.md", ref=created["commit"]["sha"]) == b"one"   # the old commit still has it
    assert call(gh, "GET", "/git/ref/heads/main")[1]["object"]["sha"] == updated["commit"]["sha"]


def test_update_without_sha_is_422_and_with_stale_sha_is_409(gh: GitHubFake) -> None:
    old_sha = put(gh, "f.txt", b"v1")[1]["content"]["sha"]
    put(gh, "f.txt", b"v2", sha=old_sha)
    before = gh.snapshot()
    status, body = put(gh, "f.txt", b"v3")
    assert status == 422 and '"sha" wasn\'t supplied.' in body["message"]
    status, body = put(gh, "f.txt", b"v3", sha=old_sha)
    assert status == 409 and body["message"] == f"f.txt does not match {old_sha}"
    assert gh.snapshot() == before and gh.file("octo/hello", "f.txt") == b"v2"


def test_delete_needs_the_current_sha(gh: GitHubFake) -> None:
    sha = put(gh, "gone.txt", b"bye")[1]["content"]["sha"]
    assert call(gh, "DELETE", "/contents/gone.txt", {"message": "rm"})[0] == 422
    assert call(gh, "DELETE", "/contents/gone.txt", {"message": "rm", "sha": "0" * 40})[0] == 409
    assert gh.file("octo/hello", "gone.txt") == b"bye"
    status, body = call(gh, "DELETE", "/contents/gone.txt", {"message": "rm", "sha": sha})
    assert status == 200 and body["content"] is None and body["commit"]["message"] == "rm"
    assert gh.file("octo/hello", "gone.txt") is None
    assert call(gh, "GET", "/contents/gone.txt")[0] == 404
    assert call(gh, "DELETE", "/contents/gone.txt", {"message": "rm", "sha": sha})[0] == 404


def test_undoing_a_file_update_restores_the_files(gh: GitHubFake) -> None:
    before = gh.snapshot(refs=False)
    readme = call(gh, "GET", "/contents/README.md")[1]
    new_sha = put(gh, "README.md", b"defaced", sha=readme["sha"])[1]["content"]["sha"]
    assert gh.snapshot(refs=False) != before
    assert put(gh, "README.md", base64.b64decode(readme["content"]), sha=new_sha)[0] == 200
    assert gh.snapshot(refs=False) == before


def test_deleting_a_label_strips_it_from_issues_and_recreating_it_restores_the_snapshot(gh: GitHubFake) -> None:
    assert call(gh, "POST", "/labels", {"name": "bug", "color": "d73a4a", "description": "broken"})[0] == 201
    status, issue = call(gh, "POST", "/issues", {"title": "t", "labels": ["bug"]})
    assert status == 201 and [label["name"] for label in issue["labels"]] == ["bug"]
    before = gh.snapshot()
    assert call(gh, "DELETE", "/labels/bug") == (204, None)
    assert call(gh, "GET", "/issues/1")[1]["labels"] == []
    assert call(gh, "GET", "/labels/bug")[0] == 404
    call(gh, "POST", "/labels", {"name": "bug", "color": "d73a4a", "description": "broken"})
    assert call(gh, "POST", "/issues/1/labels", {"labels": ["bug"]})[0] == 200
    assert gh.snapshot() == before


def test_duplicate_label_is_422_already_exists(gh: GitHubFake) -> None:
    call(gh, "POST", "/labels", {"name": "bug", "color": "d73a4a"})
    status, body = call(gh, "POST", "/labels", {"name": "Bug", "color": "ffffff"})
    assert status == 422
    assert body["errors"] == [{"resource": "Label", "code": "already_exists", "field": "name"}]
    assert gh.snapshot()["octo/hello"]["labels"] == {"bug": {"color": "d73a4a", "description": None}}


def test_issue_labels_add_replace_and_remove(gh: GitHubFake) -> None:
    call(gh, "POST", "/issues", {"title": "t", "labels": ["a"]})
    assert [x["name"] for x in call(gh, "POST", "/issues/1/labels", {"labels": ["b"]})[1]] == ["a", "b"]
    assert [x["name"] for x in call(gh, "PUT", "/issues/1/labels", {"labels": ["c"]})[1]] == ["c"]
    assert call(gh, "DELETE", "/issues/1/labels/a")[0] == 404
    assert call(gh, "DELETE", "/issues/1/labels/c") == (200, [])


def test_refs_create_refuse_duplicates_and_delete(gh: GitHubFake) -> None:
    sha = gh.head("octo/hello")
    status, payload, headers = gh.handle("POST", REPO + "/git/refs", {}, {"ref": "refs/heads/topic", "sha": sha})
    assert status == 201 and payload["object"]["sha"] == sha
    assert headers["Location"] == "https://api.github.com/repos/octo/hello/git/refs/heads/topic"
    status, body = call(gh, "POST", "/git/refs", {"ref": "refs/heads/topic", "sha": sha})
    assert status == 422 and body["message"] == "Reference already exists"
    assert call(gh, "DELETE", "/git/refs/heads/topic") == (204, None)
    assert call(gh, "GET", "/git/ref/heads/topic")[0] == 404
    status, body = call(gh, "DELETE", "/git/refs/heads/topic")
    assert status == 422 and body["message"] == "Reference does not exist"


def test_ref_update_must_fast_forward_unless_forced(gh: GitHubFake) -> None:
    old = gh.head("octo/hello")
    new = put(gh, "x", b"x")[1]["commit"]["sha"]
    status, body = call(gh, "PATCH", "/git/refs/heads/main", {"sha": old})
    assert status == 422 and body["message"] == "Update is not a fast forward"
    assert gh.head("octo/hello") == new
    assert call(gh, "PATCH", "/git/refs/heads/main", {"sha": old, "force": True})[0] == 200
    assert gh.head("octo/hello") == old and gh.file("octo/hello", "x") is None
    assert call(gh, "PATCH", "/git/refs/heads/main", {"sha": new})[0] == 200   # forward again


def test_comment_delete_is_204_and_then_404(gh: GitHubFake) -> None:
    call(gh, "POST", "/issues", {"title": "t"})
    status, payload, headers = gh.handle("POST", REPO + "/issues/1/comments", {}, {"body": "hi"})
    assert status == 201 and headers["Location"] == payload["url"]
    path = f"/issues/comments/{payload['id']}"
    assert call(gh, "PATCH", path, {"body": "edited"})[1]["body"] == "edited"
    assert call(gh, "GET", "/issues/1")[1]["comments"] == 1
    assert call(gh, "DELETE", path) == (204, None)
    assert call(gh, "GET", path)[0] == 404
    assert call(gh, "DELETE", path)[0] == 404
    assert gh.snapshot()["octo/hello"]["issues"][1]["comments"] == []


def test_issue_close_and_reopen(gh: GitHubFake) -> None:
    status, issue = call(gh, "POST", "/issues", {"title": "t", "body": "b"})
    assert (status, issue["number"], issue["state"]) == (201, 1, "open")
    assert call(gh, "POST", "/issues", {"title": "second"})[1]["number"] == 2
    before = gh.snapshot()
    closed = call(gh, "PATCH", "/issues/1", {"state": "closed"})[1]
    assert (closed["state"], closed["state_reason"]) == ("closed", "completed")
    assert gh.snapshot()["octo/hello"]["issues"][1]["state"] == "closed"
    reopened = call(gh, "PATCH", "/issues/1", {"state": "open"})[1]
    assert (reopened["state"], reopened["state_reason"]) == ("open", "reopened")
    assert gh.snapshot() == before
    assert call(gh, "PATCH", "/issues/1", {"state": "done"})[0] == 422
    assert call(gh, "DELETE", "/issues/1")[0] == 404   # no REST route deletes an issue


def test_repo_create_duplicate_and_delete(gh: GitHubFake) -> None:
    status, payload, headers = gh.handle("POST", "/user/repos", {}, {"name": "new", "private": True})
    assert status == 201 and payload["full_name"] == "octocat/new" and payload["private"] is True
    assert headers["Location"] == "https://api.github.com/repos/octocat/new"
    assert call(gh, "GET", "/repos/octocat/new/git/ref/heads/main")[0] == 200
    status, body = call(gh, "POST", "/user/repos", {"name": "new"})
    assert status == 422 and body["message"] == "Repository creation failed."
    assert body["errors"][0]["message"] == "name already exists on this account"
    assert call(gh, "POST", "/orgs/acme/repos", {"name": "new"})[0] == 201
    assert call(gh, "DELETE", "/repos/octocat/new") == (204, None)
    assert call(gh, "GET", "/repos/octocat/new")[0] == 404 and "octocat/new" not in gh.snapshot()


def test_archived_repo_refuses_writes(gh: GitHubFake) -> None:
    assert call(gh, "PATCH", "", {"archived": True})[1]["archived"] is True
    assert call(gh, "POST", "/issues", {"title": "t"})[0] == 403
    assert call(gh, "PATCH", "", {"archived": False})[0] == 200
    assert call(gh, "POST", "/issues", {"title": "t"})[0] == 201


def test_seeded_repos_and_other_gets_answer_200(gh: GitHubFake) -> None:
    for full_name in ("a/b", "octo/hello", "octo/plain"):
        assert call(gh, "GET", f"/repos/{full_name}")[0] == 200
    assert call(gh, "GET", "/repos/a/b.git/info/refs", query={"service": "git-upload-pack"})[0] == 200
    assert call(gh, "GET", "/repos/nobody/nothing")[0] == 404
    assert call(gh, "GET", "/repos/nobody/nothing/info/refs")[0] == 404
