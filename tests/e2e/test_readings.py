"""Requests a real Express app reads differently from a naive policy: a key sent twice in a query or a form, and a
path in other case or with a trailing slash. What policy refuses never reaches the app; what a rule declares gets
through."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import NODE_MODULES, serve_node

pytestmark = pytest.mark.e2e

ROUTER = NODE_MODULES.parent / "router.js"
#: chat.example declares how its server routes; lax.example is the same app, undeclared.
POLICY = {"chat": """
    version: 1
    name: chat
    servers:
      chat.example: {path_case: insensitive, trailing_slash: optional}
    rules:
      - name: post to the bots channels
        allow:
          hosts: [chat.example, lax.example]
          methods: [POST]
          path: "/api/chat.{postMessage,postEphemeral}"
          when: >-
            "channel" in request.query && request.query.channel.startsWith("C0BOTS")
            || "channel" in request.form && request.form.channel.startsWith("C0BOTS")
      - name: react in the bots channels
        allow:
          hosts: [chat.example, lax.example]
          methods: [POST]
          path: /api/reactions.add
          duplicate_keys: accept
          when: 'request.query.channel.startsWith("C0BOTS")'
      - name: the rest of the API
        allow: {hosts: [chat.example, lax.example], methods: [GET], path: "/api/**"}
      - name: never delete files
        deny: {hosts: [chat.example, lax.example], path: /api/files.delete, reason: deleting is for humans}
"""}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def app() -> Iterator[str]:
    """The Express app on 127.0.0.1; its base URL."""
    with serve_node(str(ROUTER)) as url:
        yield url


@pytest.fixture
def proxy(make_proxy, app: str):
    return make_proxy(POLICY, routes={"chat.example": app, "lax.example": app})


def send(proxy, method: str, url: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, url, proxies={"http": proxy.proxy_url()}, timeout=20, **kwargs)


def actions(app: str) -> list[dict[str, Any]]:
    """What the app did, asked directly."""
    return requests.get(f"{app}/_actions", timeout=10).json()


def assert_refused(proxy, app: str, response: requests.Response, rule: str | None, *words: str) -> None:
    """A 403 naming `rule` (None: default deny) and `words`, recorded as such, and nothing done by the app."""
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["rule"] == rule and all(w in body["reason"] for w in words), body
    row = proxy.rows()[-1]
    assert (row["decision"], row["rule"], row["reason"]) == ("deny", rule, body["reason"])
    assert actions(app) == []


@pytest.mark.parametrize("host", ["chat.example", "lax.example"])
def test_a_query_key_sent_twice_never_reaches_a_server_that_reads_the_last(proxy, app, host) -> None:
    """The condition passes the first channel; the app posts to the last. Refused before it is sent, naming the key."""
    r = send(proxy, "POST", f"http://{host}/api/chat.postMessage?channel=C0BOTS&channel=C0SECRET")
    assert_refused(proxy, app, r, "request-reading", "'channel'", "query", "more than once")


def test_a_form_field_sent_twice_never_reaches_a_server_that_reads_the_first(proxy, app) -> None:
    """A naive policy reading the last value passes the second channel; the app posts to the first."""
    r = send(proxy, "POST", "http://lax.example/api/chat.postEphemeral", data="channel=C0SECRET&channel=C0BOTS",
             headers=FORM)
    assert_refused(proxy, app, r, "request-reading", "'channel'", "form", "more than once")


def test_a_rule_that_accepts_duplicate_keys_passes_them_when_every_value_is_allowed(proxy, app) -> None:
    """`duplicate_keys: accept` lets a list through to an app that acts on every value, each of which the condition
    allows."""
    r = send(proxy, "POST", "http://chat.example/api/reactions.add?channel=C0BOTS1&channel=C0BOTS2")
    assert r.status_code == 200 and r.headers["x-goex-decision"] == "allow", r.text
    assert [a["channels"] for a in actions(app)] == [["C0BOTS1", "C0BOTS2"]]


def test_a_rule_that_accepts_duplicate_keys_decides_every_value_not_only_the_first_and_last(proxy, app) -> None:
    """A forbidden value between two allowed ones is read by an app that acts on every value: refused."""
    r = send(proxy, "POST", "http://chat.example/api/reactions.add?channel=C0BOTS&channel=C0SECRET&channel=C0BOTS2")
    assert_refused(proxy, app, r, "request-reading", "'channel'", "'C0SECRET'")


@pytest.mark.parametrize(("host", "path", "rule"), [
    ("chat.example", "/api/FILES.DELETE", "chat/never delete files"),
    ("chat.example", "/api/files.delete/", "chat/never delete files"),
    ("chat.example", "/api/FILES.DELETE/", "chat/never delete files"),
    ("chat.example", "/API/Files.Delete/", "chat/never delete files"),
    ("lax.example", "/api/FILES.DELETE", "request-reading"),
    ("lax.example", "/api/files.delete/", "request-reading"),
    ("lax.example", "/api/FILES.DELETE/", "request-reading"),
    ("lax.example", "/API/Files.Delete/", None),
])
def test_a_denied_path_in_other_case_or_with_a_trailing_slash_never_reaches_a_lenient_router(proxy, app, host, path,
                                                                                            rule) -> None:
    """Express routes all of these to files.delete. A declared server matches the deny rule itself; on an undeclared
    one an allowed request is refused because a lenient router's reading of it reaches the deny rule (and a path no
    allow rule matches as written is denied by default)."""
    r = send(proxy, "GET", f"http://{host}{path}")
    assert_refused(proxy, app, r, rule, "deleting is for humans" if rule else "no rule allows")


def test_a_declared_server_is_allowed_other_spellings_of_an_allowed_path(proxy, app) -> None:
    """`servers: {chat.example: {path_case: insensitive, trailing_slash: optional}}`: the allow rule for
    /api/chat.postMessage matches /API/CHAT.POSTMESSAGE/, which the app routes to the same handler."""
    r = send(proxy, "POST", "http://chat.example/API/CHAT.POSTMESSAGE/?channel=C0BOTS")
    assert r.status_code == 200, r.text
    assert proxy.rows()[-1]["rule"] == "chat/post to the bots channels"
    assert [(a["action"], a["url"]) for a in actions(app)] == [("posted", "/API/CHAT.POSTMESSAGE/?channel=C0BOTS")]


def test_an_undeclared_server_is_not_allowed_other_spellings_of_an_allowed_path(proxy, app) -> None:
    """Without a declaration the allow rule matches the path exactly as written: the other spelling is denied."""
    r = send(proxy, "POST", "http://lax.example/API/CHAT.POSTMESSAGE/?channel=C0BOTS")
    assert_refused(proxy, app, r, None, "no rule allows")
