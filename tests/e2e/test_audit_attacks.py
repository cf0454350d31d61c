"""Attacks on the audit log by whoever can write its database but not the chain key in the state directory: what they
change must never be acted on, and `log verify` must name it."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from goex_proxy.ids import packed
from tests.conftest import GoexProxy, serve_json

pytestmark = pytest.mark.e2e

POLICY = {"rest": """
    version: 1
    rules:
      - name: the notes API
        allow: {host: notes.example, methods: [GET, POST, PUT, PATCH, DELETE]}
"""}
DELETE = "import requests; print(requests.delete('http://notes.example/posts/3', timeout=20).status_code)"


@pytest.fixture
def json_server(tmp_path: Path) -> Iterator[str]:
    with serve_json(tmp_path, {"posts": [{"id": 1, "title": "one"}, {"id": 3, "title": "three"}]}) as url:
        yield url


@pytest.fixture
def proxy(make_proxy, json_server: str) -> GoexProxy:
    return make_proxy(POLICY, routes={"notes.example": json_server})


def rewrite_blob(proxy: GoexProxy, request_id: str, column: str, value: str | bytes) -> None:
    """Put `value` in place of what the blob a row names in `column` holds, as the writer would have stored it."""
    from goex_proxy.audit import blobs

    with sqlite3.connect(proxy.home / "audit.db") as conn:
        (ref,) = conn.execute(f"SELECT {column} FROM requests WHERE id = ?", (packed(request_id),)).fetchone()
        conn.execute("UPDATE audit_blobs SET data = ? WHERE id = ?", (blobs.encode(value), ref))


def test_undo_does_not_replay_a_pre_image_edited_in_the_database(proxy, json_server):
    """The agent deleted post 3; its pre-image (what undo puts back) is then edited in the audit database. Undo must
    refuse to act on a row that no longer holds its hash, and put nothing back. Before, it restored the attacker's
    text with the real credential, and only `log verify` (if anyone ran it) said the row was edited."""
    assert proxy.exec("mailbot", sys.executable, "-c", DELETE).stdout.strip() == "200"
    [row] = [r for r in proxy.rows() if r["method"] == "DELETE"]
    assert json.loads(row["pre_body"]) == {"id": 3, "title": "three"}
    rewrite_blob(proxy, str(row["id"]), "pre_body_blob", json.dumps({"id": 3, "title": "planted by the attacker"}).encode())

    r = proxy.cli("undo", str(row["id"]), "--yes")
    assert r.returncode != 0 and "was edited" in r.stderr and "log verify" in r.stderr, r.stdout + r.stderr
    assert [p["title"] for p in requests.get(f"{json_server}/posts", timeout=10).json()] == ["one"]
    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode != 0 and "was edited" in r.stdout + r.stderr
    assert [p["title"] for p in requests.get(f"{json_server}/posts", timeout=10).json()] == ["one"]
    verified = proxy.cli("log", "verify")
    assert verified.returncode != 0 and str(row["id"]) in verified.stdout + verified.stderr
