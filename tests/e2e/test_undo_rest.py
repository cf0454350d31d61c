"""`goex-proxy undo` with the generic REST pack against json-server (npm): create, replace, update and delete, each
undone, and the collection is what it was before the agent ran."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import GoexProxy, serve_json

pytestmark = pytest.mark.e2e

POLICY = {"rest": """
    version: 1
    rules:
      - name: the notes API
        allow: {host: notes.example, methods: [GET, POST, PUT, PATCH, DELETE]}
"""}
AGENT = """
import json, requests
api = "http://notes.example/posts"
out = {}
out["create"] = requests.post(api, json={"title": "agent's post"}, timeout=20).status_code
out["replace"] = requests.put(api + "/1", json={"title": "replaced by the agent"}, timeout=20).status_code
out["update"] = requests.patch(api + "/2", json={"title": "patched by the agent"}, timeout=20).status_code
out["delete"] = requests.delete(api + "/3", timeout=20).status_code
print(json.dumps(out))
"""


@pytest.fixture
def json_server(tmp_path: Path) -> Iterator[str]:
    with serve_json(tmp_path, {"posts": [{"id": 1, "title": "one", "tags": ["a"]}, {"id": 2, "title": "two"},
                                        {"id": 3, "title": "three", "draft": True}]}) as url:
        yield url


def posts(base: str) -> list[dict[str, object]]:
    return sorted(requests.get(f"{base}/posts", timeout=10).json(), key=lambda p: int(str(p["id"])))


@pytest.fixture
def proxy(make_proxy, json_server: str) -> GoexProxy:
    return make_proxy(POLICY, routes={"notes.example": json_server})


def test_each_change_is_undone_and_the_collection_is_as_before(proxy, json_server):
    before = posts(json_server)
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"create": 201, "replace": 200, "update": 200, "delete": 200}
    assert posts(json_server) != before

    rows = [row for row in proxy.rows() if row["method"] != "GET"]
    assert [(row["method"], row["undo_class"]) for row in rows] == [
        ("POST", "exact"), ("PUT", "needs-preimage"), ("PATCH", "needs-preimage"), ("DELETE", "needs-preimage")]
    # The pre-images were read before the agent's requests went out.
    assert json.loads(rows[1]["pre_body"]) == before[0] and rows[1]["pre_status"] == 200
    assert json.loads(rows[3]["pre_body"]) == before[2]

    for row in reversed(rows):  # newest first
        r = proxy.cli("undo", str(row["id"]), "--yes")
        assert r.returncode == 0, (row["method"], r.stdout, r.stderr)
    assert posts(json_server) == before

    compensations = [row for row in proxy.rows() if row["undo_of"] and row["method"] != "GET"]
    assert sorted(str(c["undo_of"]) for c in compensations) == sorted(str(row["id"]) for row in rows)


def test_an_update_changed_again_by_someone_else_is_a_conflict(proxy, json_server):
    assert proxy.exec("mailbot", sys.executable, "-c", AGENT).returncode == 0
    patch = next(row for row in proxy.rows() if row["method"] == "PATCH")
    requests.patch(f"{json_server}/posts/2", json={"title": "a human edited it"}, timeout=10)
    r = proxy.cli("undo", str(patch["id"]), "--yes")
    assert r.returncode == 3 and "changed again after the agent" in r.stderr
    assert requests.get(f"{json_server}/posts/2", timeout=10).json()["title"] == "a human edited it"


def test_a_session_undo_restores_the_collection(proxy, json_server):
    before = posts(json_server)
    assert proxy.exec("mailbot", sys.executable, "-c", AGENT).returncode == 0
    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert posts(json_server) == before


UNGUARDED_PACK = """version: 1
rules:
  - name: titles are set by PATCH
    match: {host: notes.example, methods: [PATCH], path: "/posts/*"}
    preimage: {method: GET, url: "${request.url}"}
    when: pre.status == 200
    class: needs-preimage
    undo:
      - {method: PUT, url: "${request.url}", body: "${pre.body}", headers: {Content-Type: application/json}}
"""


def test_an_unguarded_undo_is_refused_without_force_and_a_session_passes_it_over(make_proxy, json_server, tmp_path):
    pack = tmp_path / "mine.yaml"
    pack.write_text(UNGUARDED_PACK)
    proxy = make_proxy(POLICY, routes={"notes.example": json_server},
                       extra_config=f"undo_rules: [{pack}, builtin:rest]\n")
    before = posts(json_server)
    patch = "import requests; print(requests.patch('http://notes.example/posts/2', json={'title': 'x'}).status_code)"
    assert proxy.exec("mailbot", sys.executable, "-c", patch).stdout.strip() == "200"
    [row] = [row for row in proxy.rows() if row["method"] == "PATCH"]
    assert row["undo_class"] == "unguarded"
    checked = proxy.cli("policy", "check")
    assert "has no guard" in checked.stdout + checked.stderr

    r = proxy.cli("undo", str(row["id"]), "--yes")
    assert r.returncode != 0 and "unguarded" in r.stderr and "--force" in r.stderr
    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode != 0 and "needs --force" in r.stdout + r.stderr
    assert posts(json_server) != before                    # nothing was sent: the agent's title is still there
    r = proxy.cli("undo", str(row["id"]), "--yes", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    assert posts(json_server) == before
