"""Read-only Gmail through the shipped preset: reads pass, sending is denied and never reaches Gmail."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e

GMAIL = "https://gmail.googleapis.com/gmail/v1/users/me"
PRESET = "builtin:gmail-readonly"


@pytest.fixture
def proxy(make_proxy):
    p = make_proxy({}, start=False)
    p.config.write_text(p.config.read_text().replace("policies:\n  []", f"policies:\n  - {PRESET}"))
    return p.start()


def test_list_allowed_with_curl(proxy, upstream):
    """curl under `goex-proxy exec` lists messages through the proxy and the upstream answers."""
    r = proxy.exec("mailbot", "curl", "-sS", "--fail-with-body", f"{GMAIL}/messages")
    assert r.returncode == 0, r.stderr + r.stdout
    assert json.loads(r.stdout)["messages"][0]["id"] == "m1"
    assert upstream.seen_paths("gmail.googleapis.com") == ["/gmail/v1/users/me/messages"]


def test_send_denied_with_rule_and_reason(proxy, upstream):
    """Sending mail answers 403 naming the deny rule and its reason, and Gmail never sees the send."""
    code = (
        "import requests, json\n"
        f"r = requests.post('{GMAIL}/messages/send', json={{'raw': 'aGk='}})\n"
        "print(json.dumps({'status': r.status_code, 'body': r.json()}))\n"
    )
    r = proxy.exec("mailbot", "python", "-c", code)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == 403
    assert out["body"]["rule"] == "gmail-readonly/never send mail"
    assert "cannot be undone" in out["body"]["reason"]
    assert any("read mail" in alt for alt in out["body"]["allowed_instead"])
    assert upstream.state.gmail.sent == []
    assert "/gmail/v1/users/me/messages/send" not in upstream.seen_paths()
    row = proxy.rows()[-1]
    assert (row["decision"], row["status"], row["rule"]) == ("deny", 403, "gmail-readonly/never send mail")
