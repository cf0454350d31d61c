"""A large exchange through a real `goex-proxy run`: its audit rows are built off the event loop (past 256 KiB) and
say what a small one's say: full sizes, sha256 of every byte, the undo class, the agent's answer scrubbed."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.e2e

SLACK = "https://slack.com/api"
POLICY = {"slack": """
    version: 1
    name: slack
    agents: [slackbot]
    rules:
      - name: post
        allow: {host: slack.com, path: /api/chat.postMessage, when: 'request.json.channel == "C0BOTS"'}
"""}


def _row(proxy: Any, method: str, timeout: float = 30) -> dict[str, Any]:
    """The newest row of `method` with its outcome (the audit writer is a thread of its own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [r for r in proxy.rows() if r["method"] == method and r.get("status") is not None]
        if done:
            return done[-1]
        time.sleep(0.1)
    raise AssertionError(f"no {method} row with an outcome")


@pytest.mark.parametrize("size", [1_000, 400_000])
def test_a_large_post_is_recorded_whole_as_a_small_one(make_proxy, upstream, size: int) -> None:
    proxy = make_proxy(POLICY, extra_config="audit: {max_body_bytes: 64}\n")
    s = requests.Session()
    s.proxies = {"https": proxy.proxy_url("slackbot")}
    s.verify, s.trust_env = str(proxy.ca_cert), False
    body = json.dumps({"channel": "C0BOTS", "text": "x" * size}).encode()
    r = s.post(f"{SLACK}/chat.postMessage", data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200 and r.json()["ok"] is True
    row = _row(proxy, "POST")
    assert row["decision"] == "allow" and row["req_body"] == body[:64] and row["req_body_size"] == len(body)
    assert row["req_body_sha256"] == hashlib.sha256(body).hexdigest()
    assert row["resp_body_size"] == len(r.content)
    assert row["resp_body_sha256"] == hashlib.sha256(r.content).hexdigest()
    assert row["undo_class"] == "exact"  # the Slack pack deletes a posted message
