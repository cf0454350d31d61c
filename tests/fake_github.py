"""An in-memory fake of the GitHub REST API (repos, issues, comments, labels, git refs, contents), per its docs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

API = "https://api.github.com"
WEB = "https://github.com"
DOCS = "https://docs.github.com/rest"
USER = "octocat"                     # the authenticated user (`/user/repos`)
NOT_FOUND = {"message": "Not Found", "documentation_url": DOCS}
SEEDED = ("a/b", "octo/hello", "octo/plain")
NAME_TAKEN = {"resource": "Repository", "code": "custom", "field": "name",
              "message": "name already exists on this account"}

Reply = tuple[int, Any, dict[str, str]]
Handler = Callable[[dict[str, str], dict[str, str], dict[str, Any]], Reply]   # (path args, query, body)


def blob_sha(data: bytes) -> str:
    """Git's blob id: sha1 of `blob <len>\\0` + the bytes (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def encode64(data: bytes) -> str:
    """Base64 as GitHub sends file content: a newline after every 60 characters and at the end."""
    text = base64.b64encode(data).decode()
    return "".join(text[i:i + 60] + "\n" for i in range(0, len(text), 60))


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class GitHubError(Exception):
    """A failed request: raised by handlers, answered as GitHub's JSON error body."""

    def __init__(self, status: int, message: str = "Not Found", errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "documentation_url": DOCS}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _failed(resource: str, code: str, field_name: str) -> GitHubError:
    return GitHubError(422, "Validation Failed", [{"resource": resource, "code": code, "field": field_name}])


def _invalid(what: str) -> GitHubError:
    return GitHubError(422, f'Invalid request.\n\n"{what}" wasn\'t supplied.')


@dataclass
class Commit:
    """A commit: its whole tree (path -> blob sha) and one parent."""

    sha: str
    tree: dict[str, str]
    parent: str | None
    message: str


@dataclass
class Label:
    id: int
    name: str
    color: str
    description: str | None


@dataclass
class Issue:
    id: int
    number: int
    title: str
    body: str | None
    state: str = "open"
    state_reason: str | None = None
    labels: list[int] = field(default_factory=list)      # label ids, in the order added
    assignees: list[str] = field(default_factory=list)


@dataclass
class Comment:
    id: int
    issue: int
    body: str


@dataclass
class Repo:
    """One repository and everything it holds; `refs` maps full ref names (`refs/heads/main`) to commit shas."""

    id: int
    owner: str
    name: str
    owner_type: str = "User"
    private: bool = False
    description: str | None = None
    archived: bool = False
    default_branch: str = "main"
    issues: dict[int, Issue] = field(default_factory=dict)
    comments: dict[int, Comment] = field(default_factory=dict)
    labels: dict[str, Label] = field(default_factory=dict)       # lower-cased name -> label
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    next_number: int = 1
    pushed_at: str = ""          # when a commit last reached any branch (ISO 8601, as GitHub writes it)
    updated_at: str = ""         # when the repository's settings last changed

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def url(self) -> str:
        return f"{API}/repos/{self.full_name}"


R = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
N = r"/issues/(?P<number>\d+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [(verb, re.compile(pattern), name) for verb, pattern, name in [
    ("POST", r"/user/repos", "create_user_repo"),
    ("POST", r"/orgs/(?P<org>[^/]+)/repos", "create_org_repo"),
    ("GET", R, "get_repo"), ("PATCH", R, "update_repo"), ("DELETE", R, "delete_repo"),
    ("GET", R + r"/issues", "list_issues"), ("POST", R + r"/issues", "create_issue"),
    ("GET", R + N, "get_issue"), ("PATCH", R + N, "update_issue"),
    ("GET", R + N + r"/comments", "list_comments"), ("POST", R + N + r"/comments", "create_comment"),
    ("GET", R + r"/issues/comments/(?P<id>\d+)", "get_comment"),
    ("PATCH", R + r"/issues/comments/(?P<id>\d+)", "update_comment"),
    ("DELETE", R + r"/issues/comments/(?P<id>\d+)", "delete_comment"),
    ("GET", R + r"/labels", "list_labels"), ("POST", R + r"/labels", "create_label"),
    ("GET", R + r"/labels/(?P<name>[^/]+)", "get_label"),
    ("PATCH", R + r"/labels/(?P<name>[^/]+)", "update_label"),
    ("DELETE", R + r"/labels/(?P<name>[^/]+)", "delete_label"),
    ("GET", R + N + r"/labels", "issue_labels"), ("POST", R + N + r"/labels", "add_issue_labels"),
    ("PUT", R + N + r"/labels", "set_issue_labels"), ("DELETE", R + N + r"/labels", "clear_issue_labels"),
    ("DELETE", R + N + r"/labels/(?P<name>[^/]+)", "remove_issue_label"),
    ("GET", R + r"/git/ref/(?P<ref>.+)", "get_ref"), ("GET", R + r"/git/refs/(?P<ref>.+)", "match_refs"),
    ("POST", R + r"/git/refs", "create_ref"),
    ("PATCH", R + r"/git/refs/(?P<ref>.+)", "update_ref"), ("DELETE", R + r"/git/refs/(?P<ref>.+)", "delete_ref"),
    # GitHub documents `git/refs/{ref}` for these, and also answers them at `git/ref/{ref}`.
    ("PATCH", R + r"/git/ref/(?P<ref>.+)", "update_ref"), ("DELETE", R + r"/git/ref/(?P<ref>.+)", "delete_ref"),
    ("GET", R + r"/contents(?:/(?P<path>.*))?", "get_contents"),
    ("PUT", R + r"/contents/(?P<path>.+)", "put_contents"),
    ("DELETE", R + r"/contents/(?P<path>.+)", "delete_contents"),
]]


@dataclass
class GitHubFake:
    """Repositories and what they hold; `handle` answers one request. Callers hold the server's lock.

    Seeded with a/b, octo/hello (README.md) and octo/plain, each with `refs/heads/main` at an initial commit.

    Two ways real answers vary, within what the docs allow, can be switched on: `created_as_200` answers 200 where
    GitHub documents 201 (its file API answers either for the same PUT), and `omit_urls` leaves out every `url`
    field and the Location header (a client must know where a resource is from its own request and its id).
    """

    repos: dict[str, Repo] = field(default_factory=dict)     # lower-cased "owner/name" -> repo
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    clock: itertools.count[int] = field(default_factory=lambda: itertools.count(1_700_000_000))
    created_as_200: bool = False
    omit_urls: bool = False

    def __post_init__(self) -> None:
        for full_name in SEEDED:
            self.seed_repo(full_name, files={"README.md": b"# hello\n"} if full_name == "octo/hello" else None)

    # -- the HTTP surface ------------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> Reply:
        """Answer one request with (status, JSON payload, headers); a GET's 200 carries an ETag."""
        try:
            known = False
            for verb, pattern, name in ROUTES:
                match = pattern.fullmatch(path)
                if match is None:
                    continue
                known = True
                if verb == method:
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    handler: Handler = getattr(self, "_" + name)
                    status, payload, headers = handler(args, query, body)
                    if self.created_as_200 and status == 201:
                        status = 200
                    if self.omit_urls:
                        payload, headers = _without_urls(payload), {k: v for k, v in headers.items() if k != "Location"}
                    if method == "GET" and status == 200:
                        headers = {**headers, "ETag": f'W/"{_sha1(json.dumps(payload, sort_keys=True))}"'}
                    return status, payload, headers
            if not known and method == "GET":
                return self._fallback(path)
            raise GitHubError(404)
        except GitHubError as error:
            return error.status, error.payload(), {}

    def _fallback(self, path: str) -> Reply:
        """Any other GET under an existing repo (e.g. git's `/repos/a/b.git/info/refs`) answers a small JSON."""
        parts = path.split("/")
        if len(parts) > 3 and parts[1] == "repos":
            repo = self.repos.get(f"{parts[2]}/{parts[3].removesuffix('.git')}".lower())
            if repo is not None:
                return 200, {"id": repo.id, "full_name": repo.full_name, "private": repo.private}, {}
        raise GitHubError(404)

    # -- test helpers ----------------------------------------------------------------------------------------------

    def seed_repo(self, full_name: str, *, private: bool = False, description: str | None = None,
                  files: dict[str, bytes] | None = None, owner_type: str = "User") -> Repo:
        """Create a repo directly, `refs/heads/main` at an initial commit holding `files`."""
        owner, name = full_name.split("/")
        repo = Repo(next(self.ids), owner, name, owner_type, private, description)
        repo.updated_at = self._now()
        self.repos[full_name.lower()] = repo
        self._commit(repo, "main", {path: self._blob(repo, data) for path, data in (files or {}).items()},
                     "Initial commit")
        return repo

    def seed_file(self, full_name: str, path: str, data: bytes | None, branch: str | None = None) -> str:
        """Commit `data` at `path` (None deletes it) on `branch`; return the new commit sha."""
        repo = self.repos[full_name.lower()]
        branch = branch or repo.default_branch
        tree = dict(repo.commits[repo.refs[f"refs/heads/{branch}"]].tree)
        if data is None:
            tree.pop(path, None)
        else:
            tree[path] = self._blob(repo, data)
        return self._commit(repo, branch, tree, f"Seed {path}").sha

    def file(self, full_name: str, path: str, ref: str | None = None) -> bytes | None:
        """The bytes at `path` on `ref` (default branch if None), or None."""
        repo = self.repos.get(full_name.lower())
        if repo is None:
            return None
        try:
            sha = self._resolve(repo, ref).tree.get(path)
        except GitHubError:
            return None
        return None if sha is None else repo.blobs[sha]

    def head(self, full_name: str, branch: str | None = None) -> str:
        """The commit sha `refs/heads/<branch>` points at."""
        repo = self.repos[full_name.lower()]
        return repo.refs[f"refs/heads/{branch or repo.default_branch}"]

    def snapshot(self, refs: bool = True) -> dict[str, Any]:
        """Plain, comparable state keyed by names and numbers, never by ids (a recreated label compares equal).

        `{full_name: {private, description, archived, default_branch,
                      issues: {number: {title, body, state, labels: [names, sorted], assignees: [sorted],
                                        comments: [bodies, oldest first]}},
                      labels: {name: {color, description}},
                      refs: {full ref: commit sha},          # left out when refs=False
                      files: {branch: {path: bytes}}}}`
        `state_reason` is left out: GitHub sets it to "reopened" on reopening, so no call can restore None.
        """
        out: dict[str, Any] = {}
        for repo in self.repos.values():
            names = {label.id: label.name for label in repo.labels.values()}
            state: dict[str, Any] = {
                "private": repo.private, "description": repo.description, "archived": repo.archived,
                "default_branch": repo.default_branch,
                "issues": {n: {"title": i.title, "body": i.body, "state": i.state,
                               "labels": sorted(names[x] for x in i.labels), "assignees": sorted(i.assignees),
                               "comments": [c.body for c in sorted(repo.comments.values(), key=lambda c: c.id)
                                            if c.issue == n]}
                           for n, i in repo.issues.items()},
                "labels": {label.name: {"color": label.color, "description": label.description}
                           for label in repo.labels.values()},
                "files": {ref.removeprefix("refs/heads/"): {p: repo.blobs[s] for p, s in repo.commits[sha].tree.items()}
                          for ref, sha in repo.refs.items() if ref.startswith("refs/heads/")},
            }
            if refs:
                state["refs"] = dict(repo.refs)
            out[repo.full_name] = state
        return out

    # -- shared pieces ---------------------------------------------------------------------------------------------

    def _repo(self, a: dict[str, str]) -> Repo:
        repo = self.repos.get(f"{a['owner']}/{a['repo']}".lower())
        if repo is None:
            raise GitHubError(404)
        return repo

    def _writable(self, a: dict[str, str]) -> Repo:
        repo = self._repo(a)
        if repo.archived:
            raise GitHubError(403, "Repository was archived so is read-only.")
        return repo

    @staticmethod
    def _blob(repo: Repo, data: bytes) -> str:
        sha = blob_sha(data)
        repo.blobs[sha] = data
        return sha

    def _commit(self, repo: Repo, branch: str, tree: dict[str, str], message: str) -> Commit:
        """Record a commit on top of `branch` (its parent is the branch's head) and move the branch to it."""
        ref = f"refs/heads/{branch}"
        parent = repo.refs.get(ref)
        sha = _sha1(f"commit {_tree_sha(tree)}\nparent {parent}\n\n{message}\n{next(self.ids)}")
        commit = repo.commits[sha] = Commit(sha, tree, parent, message)
        repo.refs[ref] = sha
        repo.pushed_at = self._now()
        return commit

    def _now(self) -> str:
        """The fake's clock: a second later at every call, as GitHub's timestamps (ISO 8601, UTC)."""
        return datetime.fromtimestamp(next(self.clock), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _resolve(self, repo: Repo, ref: str | None) -> Commit:
        """A branch or tag name, `heads/x`, `refs/heads/x` or a commit sha -> the commit (None: default branch)."""
        ref = ref or repo.default_branch
        for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/{ref}"):
            if name in repo.refs:
                return repo.commits[repo.refs[name]]
        if ref in repo.commits:
            return repo.commits[ref]
        raise GitHubError(404, f"No commit found for the ref {ref}")

    def _label_ids(self, repo: Repo, names: Any) -> list[int]:
        """Label ids for names (or `{"name"}` objects); like GitHub, a name not yet defined creates the label."""
        if not isinstance(names, list):
            raise GitHubError(422, "Invalid request.\n\nFor 'labels', expected an array of strings.")
        ids: list[int] = []
        for item in names:
            name = str(item.get("name") if isinstance(item, dict) else item)
            label = repo.labels.get(name.lower())
            if label is None:
                label = repo.labels[name.lower()] = Label(next(self.ids), name, "ededed", None)
            if label.id not in ids:
                ids.append(label.id)
        return ids

    def _issue(self, repo: Repo, a: dict[str, str]) -> Issue:
        issue = repo.issues.get(int(a["number"]))
        if issue is None:
            raise GitHubError(404)
        return issue

    def _comment(self, repo: Repo, a: dict[str, str]) -> Comment:
        comment = repo.comments.get(int(a["id"]))
        if comment is None:
            raise GitHubError(404)
        return comment

    def _label(self, repo: Repo, name: str) -> Label:
        label = repo.labels.get(name.lower())
        if label is None:
            raise GitHubError(404)
        return label

    # -- JSON shapes -----------------------------------------------------------------------------------------------

    @staticmethod
    def _repo_json(repo: Repo) -> dict[str, Any]:
        return {"id": repo.id, "name": repo.name, "full_name": repo.full_name,
                "owner": {"login": repo.owner, "type": repo.owner_type}, "private": repo.private,
                "visibility": "private" if repo.private else "public", "description": repo.description,
                "archived": repo.archived, "default_branch": repo.default_branch, "url": repo.url,
                "html_url": f"{WEB}/{repo.full_name}", "pushed_at": repo.pushed_at, "updated_at": repo.updated_at,
                "open_issues_count": sum(i.state == "open" for i in repo.issues.values())}

    @staticmethod
    def _label_json(repo: Repo, label: Label) -> dict[str, Any]:
        return {"id": label.id, "url": f"{repo.url}/labels/{quote(label.name)}", "name": label.name,
                "color": label.color, "default": False, "description": label.description}

    def _issue_json(self, repo: Repo, issue: Issue) -> dict[str, Any]:
        by_id = {label.id: label for label in repo.labels.values()}
        return {"id": issue.id, "number": issue.number, "url": f"{repo.url}/issues/{issue.number}",
                "html_url": f"{WEB}/{repo.full_name}/issues/{issue.number}", "title": issue.title,
                "body": issue.body, "state": issue.state, "state_reason": issue.state_reason, "locked": False,
                "user": {"login": USER}, "labels": [self._label_json(repo, by_id[i]) for i in issue.labels],
                "assignees": [{"login": login} for login in issue.assignees],
                "comments": sum(c.issue == issue.number for c in repo.comments.values())}

    @staticmethod
    def _comment_json(repo: Repo, comment: Comment) -> dict[str, Any]:
        return {"id": comment.id, "url": f"{repo.url}/issues/comments/{comment.id}",
                "html_url": f"{WEB}/{repo.full_name}/issues/{comment.issue}#issuecomment-{comment.id}",
                "issue_url": f"{repo.url}/issues/{comment.issue}", "body": comment.body, "user": {"login": USER}}

    @staticmethod
    def _ref_json(repo: Repo, ref: str) -> dict[str, Any]:
        sha = repo.refs[ref]
        return {"ref": ref, "url": f"{repo.url}/git/{ref}",
                "object": {"type": "commit", "sha": sha, "url": f"{repo.url}/git/commits/{sha}"}}

    @staticmethod
    def _file_json(repo: Repo, path: str, sha: str, ref: str) -> dict[str, Any]:
        url = f"{repo.url}/contents/{path}?ref={ref}"
        git_url, html_url = f"{repo.url}/git/blobs/{sha}", f"{WEB}/{repo.full_name}/blob/{ref}/{path}"
        return {"type": "file", "name": path.rsplit("/", 1)[-1], "path": path, "sha": sha,
                "size": len(repo.blobs[sha]), "url": url, "git_url": git_url, "html_url": html_url,
                "download_url": f"https://raw.githubusercontent.com/{repo.full_name}/{ref}/{path}",
                "_links": {"self": url, "git": git_url, "html": html_url}}

    @staticmethod
    def _commit_json(repo: Repo, commit: Commit) -> dict[str, Any]:
        parents = [{"sha": p, "url": f"{repo.url}/git/commits/{p}"} for p in [commit.parent] if p is not None]
        return {"sha": commit.sha, "url": f"{repo.url}/git/commits/{commit.sha}",
                "html_url": f"{WEB}/{repo.full_name}/commit/{commit.sha}", "message": commit.message,
                "tree": {"sha": _tree_sha(commit.tree)}, "parents": parents}

    # -- repos -----------------------------------------------------------------------------------------------------

    def _create_user_repo(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        return self._create_repo(USER, "User", body)

    def _create_org_repo(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        return self._create_repo(a["org"], "Organization", body)

    def _create_repo(self, owner: str, owner_type: str, body: dict[str, Any]) -> Reply:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise GitHubError(422, "Repository creation failed.",
                              [{"resource": "Repository", "code": "missing_field", "field": "name"}])
        if f"{owner}/{name}".lower() in self.repos:
            raise GitHubError(422, "Repository creation failed.", [NAME_TAKEN])
        repo = self.seed_repo(f"{owner}/{name}", private=bool(body.get("private", False)),
                              description=body.get("description"), owner_type=owner_type)
        return 201, self._repo_json(repo), {"Location": repo.url}

    def _get_repo(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        return 200, self._repo_json(self._repo(a)), {}

    def _update_repo(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._repo(a)
        name = str(body.get("name", repo.name))
        if name.lower() != repo.name.lower() and f"{repo.owner}/{name}".lower() in self.repos:
            raise GitHubError(422, "Validation Failed", [NAME_TAKEN])
        del self.repos[repo.full_name.lower()]
        repo.name = name
        self.repos[repo.full_name.lower()] = repo
        repo.description = body.get("description", repo.description)
        repo.private = bool(body.get("private", repo.private))
        repo.archived = bool(body.get("archived", repo.archived))
        repo.updated_at = self._now()
        return 200, self._repo_json(repo), {}

    def _delete_repo(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        del self.repos[self._repo(a).full_name.lower()]
        return 204, None, {}

    # -- issues and comments ---------------------------------------------------------------------------------------

    def _list_issues(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        """Newest first; `state` (open, closed, all), `labels` (comma-separated names, every one must be on the issue,
        matched without regard to case) and `per_page` (default 30) as GitHub documents them."""
        repo, state = self._repo(a), query.get("state", "open")
        wanted = [n.strip().lower() for n in query["labels"].split(",")] if query.get("labels") else []
        names = {label.id: label.name.lower() for label in repo.labels.values()}
        issues = [i for i in sorted(repo.issues.values(), key=lambda i: -i.number) if state in ("all", i.state)
                  and all(n in {names[x] for x in i.labels} for n in wanted)]
        return 200, [self._issue_json(repo, i) for i in issues[:int(query.get("per_page", 30))]], {}

    def _create_issue(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._writable(a)
        if not isinstance(body.get("title"), str) or not body["title"]:
            raise _failed("Issue", "missing_field", "title")
        issue = Issue(next(self.ids), repo.next_number, body["title"], body.get("body"),
                      labels=self._label_ids(repo, body.get("labels", [])),
                      assignees=[str(login) for login in body.get("assignees", [])])
        repo.issues[issue.number] = issue
        repo.next_number += 1
        payload = self._issue_json(repo, issue)
        return 201, payload, {"Location": payload["url"]}

    def _get_issue(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._repo(a)
        return 200, self._issue_json(repo, self._issue(repo, a)), {}

    def _update_issue(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        """Title, body, labels, assignees, state; closing defaults state_reason to completed, reopening to reopened."""
        repo = self._writable(a)
        issue = self._issue(repo, a)
        state, reason = body.get("state", issue.state), body.get("state_reason")
        if state not in ("open", "closed"):
            raise _failed("Issue", "invalid", "state")
        if reason not in (None, "completed", "not_planned", "reopened"):
            raise _failed("Issue", "invalid", "state_reason")
        labels = self._label_ids(repo, body["labels"]) if "labels" in body else issue.labels
        if state != issue.state or reason is not None:
            issue.state_reason = reason or ("completed" if state == "closed" else "reopened")
        issue.state = state
        issue.title = body.get("title", issue.title)
        issue.body = body.get("body", issue.body)
        issue.labels = labels
        if "assignees" in body:
            issue.assignees = [str(login) for login in body["assignees"]]
        return 200, self._issue_json(repo, issue), {}

    def _list_comments(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._repo(a)
        issue = self._issue(repo, a)
        comments = sorted((c for c in repo.comments.values() if c.issue == issue.number), key=lambda c: c.id)
        return 200, [self._comment_json(repo, c) for c in comments], {}

    def _create_comment(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._writable(a)
        issue = self._issue(repo, a)
        if not isinstance(body.get("body"), str) or not body["body"]:
            raise _failed("IssueComment", "missing_field", "body")
        comment = Comment(next(self.ids), issue.number, body["body"])
        repo.comments[comment.id] = comment
        payload = self._comment_json(repo, comment)
        return 201, payload, {"Location": payload["url"]}

    def _get_comment(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._repo(a)
        return 200, self._comment_json(repo, self._comment(repo, a)), {}

    def _update_comment(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._writable(a)
        comment = self._comment(repo, a)
        if not isinstance(body.get("body"), str) or not body["body"]:
            raise _failed("IssueComment", "missing_field", "body")
        comment.body = body["body"]
        return 200, self._comment_json(repo, comment), {}

    def _delete_comment(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._writable(a)
        del repo.comments[self._comment(repo, a).id]
        return 204, None, {}

    # -- labels ----------------------------------------------------------------------------------------------------

    def _list_labels(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._repo(a)
        return 200, [self._label_json(repo, label) for label in repo.labels.values()], {}

    def _create_label(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._writable(a)
        name, color = body.get("name"), body.get("color", "ededed")
        if not isinstance(name, str) or not name:
            raise _failed("Label", "missing_field", "name")
        if not re.fullmatch(r"[0-9a-fA-F]{6}", str(color)):
            raise _failed("Label", "invalid", "color")
        if name.lower() in repo.labels:
            raise _failed("Label", "already_exists", "name")
        label = repo.labels[name.lower()] = Label(next(self.ids), name, color, body.get("description"))
        payload = self._label_json(repo, label)
        return 201, payload, {"Location": payload["url"]}

    def _get_label(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._repo(a)
        return 200, self._label_json(repo, self._label(repo, a["name"])), {}

    def _update_label(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        """`new_name`, `color`, `description` (GitHub's field names); a rename shows on every issue carrying it."""
        repo = self._writable(a)
        label = self._label(repo, a["name"])
        new_name = str(body.get("new_name", label.name))
        if new_name.lower() != label.name.lower() and new_name.lower() in repo.labels:
            raise _failed("Label", "already_exists", "name")
        color = str(body.get("color", label.color))
        if not re.fullmatch(r"[0-9a-fA-F]{6}", color):
            raise _failed("Label", "invalid", "color")
        del repo.labels[label.name.lower()]
        label.name, label.color = new_name, color
        label.description = body.get("description", label.description)
        repo.labels[new_name.lower()] = label
        return 200, self._label_json(repo, label), {}

    def _delete_label(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        """Delete the label and take it off every issue."""
        repo = self._writable(a)
        label = repo.labels.pop(self._label(repo, a["name"]).name.lower())
        for issue in repo.issues.values():
            issue.labels = [i for i in issue.labels if i != label.id]
        return 204, None, {}

    def _issue_labels(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._repo(a)
        issue = self._issue(repo, a)
        return 200, self._issue_json(repo, issue)["labels"], {}

    def _add_issue_labels(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._writable(a)
        issue = self._issue(repo, a)
        issue.labels += [i for i in self._label_ids(repo, body.get("labels")) if i not in issue.labels]
        return 200, self._issue_json(repo, issue)["labels"], {}

    def _set_issue_labels(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._writable(a)
        issue = self._issue(repo, a)
        issue.labels = self._label_ids(repo, body.get("labels", []))
        return 200, self._issue_json(repo, issue)["labels"], {}

    def _clear_issue_labels(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._writable(a)
        self._issue(repo, a).labels = []
        return 204, None, {}

    def _remove_issue_label(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._writable(a)
        issue = self._issue(repo, a)
        label = repo.labels.get(a["name"].lower())
        if label is None or label.id not in issue.labels:
            raise GitHubError(404, "Label does not exist")
        issue.labels.remove(label.id)
        return 200, self._issue_json(repo, issue)["labels"], {}

    # -- git refs --------------------------------------------------------------------------------------------------

    def _get_ref(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo, ref = self._repo(a), "refs/" + a["ref"]
        if ref not in repo.refs:
            raise GitHubError(404)
        return 200, self._ref_json(repo, ref), {}

    def _match_refs(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        """The older `git/refs/{ref}` GET: the ref itself if it exists, else every ref under that prefix."""
        repo, ref = self._repo(a), "refs/" + a["ref"]
        if ref in repo.refs:
            return 200, self._ref_json(repo, ref), {}
        matches = sorted(r for r in repo.refs if r.startswith(ref.rstrip("/") + "/"))
        if not matches:
            raise GitHubError(404)
        return 200, [self._ref_json(repo, r) for r in matches], {}

    def _create_ref(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo = self._writable(a)
        ref, sha = body.get("ref"), body.get("sha")
        if not isinstance(ref, str) or not ref.startswith("refs/") or ref.count("/") < 2:
            raise GitHubError(422, "Reference name must start with 'refs/' and have at least two slashes.")
        if sha not in repo.commits:
            raise GitHubError(422, "Object does not exist")
        if ref in repo.refs:
            raise GitHubError(422, "Reference already exists")
        repo.refs[ref] = sha
        payload = self._ref_json(repo, ref)
        return 201, payload, {"Location": payload["url"]}

    def _update_ref(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        """Move a ref. Fast-forward means the new commit is the current one or descends from it by parent links;
        anything else needs `force: true`."""
        repo, ref, sha = self._writable(a), "refs/" + a["ref"], body.get("sha")
        if ref not in repo.refs:
            raise GitHubError(422, "Reference does not exist")
        if sha not in repo.commits:
            raise GitHubError(422, "Object does not exist")
        if not body.get("force") and not self._descends(repo, sha, repo.refs[ref]):
            raise GitHubError(422, "Update is not a fast forward")
        repo.refs[ref] = sha
        return 200, self._ref_json(repo, ref), {}

    @staticmethod
    def _descends(repo: Repo, sha: str | None, ancestor: str) -> bool:
        while sha is not None:
            if sha == ancestor:
                return True
            sha = repo.commits[sha].parent
        return False

    def _delete_ref(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        repo, ref = self._writable(a), "refs/" + a["ref"]
        if repo.refs.pop(ref, None) is None:
            raise GitHubError(422, "Reference does not exist")
        return 204, None, {}

    # -- contents --------------------------------------------------------------------------------------------------

    def _get_contents(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        """A file's JSON with base64 content, or a directory's listing (`path` empty: the root)."""
        repo = self._repo(a)
        ref = query.get("ref") or repo.default_branch
        tree, path = self._resolve(repo, ref).tree, a.get("path", "").strip("/")
        if path in tree:
            sha = tree[path]
            return 200, {**self._file_json(repo, path, sha, ref), "content": encode64(repo.blobs[sha]),
                         "encoding": "base64"}, {}
        prefix = f"{path}/" if path else ""
        entries: dict[str, dict[str, Any]] = {}
        for p, sha in sorted(tree.items()):
            if p.startswith(prefix):
                head, _, rest = p[len(prefix):].partition("/")
                if rest:
                    sub = {q: s for q, s in tree.items() if q.startswith(f"{prefix}{head}/")}
                    entries[head] = {"type": "dir", "name": head, "path": prefix + head, "sha": _tree_sha(sub),
                                     "size": 0, "url": f"{repo.url}/contents/{prefix}{head}?ref={ref}"}
                else:
                    entries[head] = self._file_json(repo, p, sha, ref)
        if path and not entries:
            raise GitHubError(404)
        return 200, list(entries.values()), {}

    def _put_contents(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        """Create (201, no `sha`) or update (200, `sha` must be the file's current blob sha, else 409)."""
        repo, path = self._writable(a), a["path"].strip("/")
        if not isinstance(body.get("message"), str) or not body["message"]:
            raise _invalid("message")
        if not isinstance(body.get("content"), str):
            raise _invalid("content")
        try:
            data = base64.b64decode(re.sub(r"\s", "", body["content"]), validate=True)
        except binascii.Error:
            raise GitHubError(422, "content is not valid Base64") from None
        branch = self._branch(repo, body)
        tree = dict(repo.commits[repo.refs[f"refs/heads/{branch}"]].tree)
        current, sha = tree.get(path), body.get("sha")
        if current is None and sha:
            raise GitHubError(409, f"{path} does not match {sha}")
        if current is not None and not sha:
            raise _invalid("sha")
        if current is not None and sha != current:
            raise GitHubError(409, f"{path} does not match {sha}")
        tree[path] = self._blob(repo, data)
        commit = self._commit(repo, branch, tree, body["message"])
        return (201 if current is None else 200), {"content": self._file_json(repo, path, tree[path], branch),
                                                   "commit": self._commit_json(repo, commit)}, {}

    def _delete_contents(self, a: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Reply:
        """Delete a file: `sha` must be its current blob sha (missing: 422, stale: 409)."""
        repo, path = self._writable(a), a["path"].strip("/")
        if not isinstance(body.get("message"), str) or not body["message"]:
            raise _invalid("message")
        branch = self._branch(repo, body)
        tree = dict(repo.commits[repo.refs[f"refs/heads/{branch}"]].tree)
        if path not in tree:
            raise GitHubError(404)
        if not body.get("sha"):
            raise _invalid("sha")
        if body["sha"] != tree[path]:
            raise GitHubError(409, f"{path} does not match {body['sha']}")
        del tree[path]
        commit = self._commit(repo, branch, tree, body["message"])
        return 200, {"content": None, "commit": self._commit_json(repo, commit)}, {}

    @staticmethod
    def _branch(repo: Repo, body: dict[str, Any]) -> str:
        branch = str(body.get("branch") or repo.default_branch).removeprefix("refs/heads/")
        if f"refs/heads/{branch}" not in repo.refs:
            raise GitHubError(404, f"Branch {branch} not found")
        return branch


def _without_urls(payload: Any) -> Any:
    """The answer with every `url` field left out, at any depth."""
    if isinstance(payload, dict):
        return {k: _without_urls(v) for k, v in payload.items() if k != "url"}
    if isinstance(payload, list):
        return [_without_urls(v) for v in payload]
    return payload


def _tree_sha(tree: dict[str, str]) -> str:
    """A stand-in tree id: stable for equal trees (not git's real tree hash)."""
    return _sha1("".join(f"{path}\0{sha}\n" for path, sha in sorted(tree.items())))
