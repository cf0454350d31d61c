"""OAuth2 inside the proxy: `authorize` with PKCE, refresh before expiry and after a 401, revoked grants denied."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import GOEX, GoexProxy
from tests.fake_oauth import CLIENT_ID, CLIENT_SECRET, FakeOAuth

pytestmark = pytest.mark.e2e

CREDENTIAL = f"""credentials:
  api:
    secret: api-oauth
    hosts: [api.oauth.example]
    inject:
      oauth2:
        provider: generic
        authorize_url: https://oauth.example/authorize
        token_url: https://oauth.example/token
        client_id: {CLIENT_ID}
        client_secret: {{env: GOEX_TEST_CLIENT_SECRET}}
        scopes: [read, write]
        refresh_margin: 1s
    env: [API_TOKEN]
"""

POLICY = {"api": """
    version: 1
    rules:
      - name: the test API
        allow: {hosts: [api.oauth.example]}
"""}

# Calls the API every 0.25 s for `seconds`; the agent only ever holds the placeholder in API_TOKEN.
AGENT = """
import json, os, sys, time, requests
seconds, path = float(sys.argv[1]), sys.argv[2]
out, end = [], time.time() + seconds
while True:
    r = requests.get("https://api.oauth.example" + path, timeout=20,
                     headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]})
    out.append({"status": r.status_code, "body": r.text, "headers": dict(r.headers)})
    if time.time() >= end:
        break
    time.sleep(0.25)
print(json.dumps(out))
"""


@pytest.fixture
def proxy(make_proxy, oauth_server: FakeOAuth, monkeypatch: pytest.MonkeyPatch) -> GoexProxy:
    monkeypatch.setenv("GOEX_TEST_CLIENT_SECRET", CLIENT_SECRET)
    p = make_proxy(POLICY, start=False, routes={h: oauth_server.url for h in FakeOAuth.HOSTS}, extra_config=CREDENTIAL)
    p.env["GOEX_TEST_CLIENT_SECRET"] = CLIENT_SECRET
    return p


def authorize(proxy: GoexProxy, oauth_server: FakeOAuth, ca_file: Path) -> subprocess.CompletedProcess[str]:
    """Run `goex-proxy authorize api` and play the browser: open the address it prints, follow the redirect."""
    proc = subprocess.Popen([*GOEX, "authorize", "api", "--config", str(proxy.config), "--no-browser", "--timeout", "30"],
                            env=proxy.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    address = ""
    for line in proc.stderr:
        if line.strip().startswith("https://oauth.example/authorize?"):
            address = line.strip()
            break
    assert address, "authorize printed no address to open"
    consent = requests.get(oauth_server.url + address.removeprefix("https://oauth.example"), verify=str(ca_file),
                           headers={"Host": "oauth.example"}, allow_redirects=False, timeout=10)
    assert consent.status_code == 302 and consent.headers["Location"].startswith("http://127.0.0.1:")
    page = requests.get(consent.headers["Location"], timeout=10)
    assert page.status_code == 200 and "authorized" in page.text
    stdout, stderr = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def agent_calls(proxy: GoexProxy, seconds: float, path: str = "/me") -> list[dict[str, object]]:
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT, str(seconds), path, timeout=90)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_authorize_then_calls_across_expiry_never_fail(proxy, oauth_server, upstream_ca):
    """PKCE consent stores tokens; access tokens living 2 s are refreshed by the proxy while the agent works."""
    done = authorize(proxy, oauth_server, upstream_ca[1])
    assert done.returncode == 0, done.stderr
    assert "authorized api" in done.stdout and "with a refresh token" in done.stdout
    assert oauth_server.state.grants == ["authorization_code"]

    proxy.start()
    calls = agent_calls(proxy, 6.0)
    assert len(calls) >= 10
    assert [c["status"] for c in calls] == [200] * len(calls), calls
    serials = {json.loads(str(c["body"]))["token_serial"] for c in calls}
    assert len(serials) >= 3, "the tokens should have been refreshed across several expiries"
    assert oauth_server.state.grants.count("refresh_token") >= 2
    # Refreshed before expiry: the API never had to refuse a token.
    assert all(status == 200 for _, status in oauth_server.state.api_calls)

    # Refresh tokens rotate; the proxy saved each new one, so a restarted proxy carries on.
    proxy.stop()
    time.sleep(2.5)
    proxy.start()
    assert [c["status"] for c in agent_calls(proxy, 0)] == [200]

    # The tokens never reached the agent, the audit log, or any output.
    echoed = agent_calls(proxy, 0, "/echo")[0]
    assert json.loads(str(echoed["body"]))["authorization"] == "Bearer goex-placeholder-api"
    audit_bytes = b"".join(f.read_bytes() for f in proxy.home.glob("audit.db*"))
    outputs = done.stdout + done.stderr + proxy.log_text() + proxy.cli("log", "--json").stdout + json.dumps(calls)
    outputs += proxy.cli("secrets", "list").stdout + json.dumps(echoed)
    for token in oauth_server.state.issued + [CLIENT_SECRET]:
        assert token not in outputs and token.encode() not in audit_bytes, f"{token[:5]}... leaked"


def test_401_is_refreshed_and_retried_once(proxy, oauth_server, upstream_ca):
    """The provider drops access tokens early: the 401 makes the proxy refresh and retry; the agent sees 200."""
    oauth_server.state.lifetime = 3600  # no expiry during the test: only the provider's revocation causes the 401
    assert authorize(proxy, oauth_server, upstream_ca[1]).returncode == 0
    proxy.start()
    assert [c["status"] for c in agent_calls(proxy, 0)] == [200]
    oauth_server.state.revoke_access()

    calls = agent_calls(proxy, 0)
    assert [c["status"] for c in calls] == [200]
    assert [s for _, s in oauth_server.state.api_calls] == [200, 401, 200]
    # The retry says what the agent said: the same headers (httpx adds none of its own), a new token.
    first, retry = oauth_server.state.api_headers[1:]
    assert {k.lower() for k in retry} == {k.lower() for k in first} - {"connection"}  # hop-by-hop: its own
    assert retry["User-Agent"] == first["User-Agent"] and retry["Authorization"] != first["Authorization"]
    assert oauth_server.state.grants == ["authorization_code", "refresh_token"]
    rows = [r for r in proxy.rows() if r["host"] == "api.oauth.example"]
    assert [r["status"] for r in rows] == [200, 200] and rows[-1]["credential"] == "api"
    assert calls[0]["headers"]["X-Goex-Request-Id"] == rows[-1]["id"]


def test_revoked_grant_is_denied_with_a_clear_reason(proxy, oauth_server, upstream_ca):
    """A refresh token the provider no longer honours: requests are denied, saying why and what to run."""
    assert authorize(proxy, oauth_server, upstream_ca[1]).returncode == 0
    proxy.start()
    oauth_server.state.revoke_refresh()
    time.sleep(2.2)  # the access token expires; the proxy must refresh, and the provider refuses

    calls = agent_calls(proxy, 0) + agent_calls(proxy, 0)
    for call in calls:
        assert call["status"] == 403
        body = json.loads(str(call["body"]))
        assert "invalid_grant" in body["reason"] and "goex-proxy authorize api" in body["reason"], body
    assert oauth_server.state.grants.count("refresh_token") == 1, "a refused refresh is not retried at once"
    assert [p for p, _ in oauth_server.state.api_calls] == [], "nothing was forwarded without a token"
    assert all(r["decision"] == "deny" for r in proxy.rows())
    # The provider's error quoted the refresh token; neither the agent nor the audit log got it.
    audit_bytes = b"".join(f.read_bytes() for f in proxy.home.glob("audit.db*"))
    for token in oauth_server.state.issued:
        assert token not in json.dumps(calls) and token.encode() not in audit_bytes


def test_a_401_that_is_not_about_expiry_refreshes_once_at_most(proxy, oauth_server, upstream_ca):
    """An endpoint that keeps answering 401 (a missing scope) gets its 401s back; the token endpoint is not hammered."""
    oauth_server.state.lifetime = 3600  # no expiry during the test: only the provider's revocation causes the 401
    assert authorize(proxy, oauth_server, upstream_ca[1]).returncode == 0
    proxy.start()
    calls = [agent_calls(proxy, 0, "/scope-missing")[0] for _ in range(3)]
    assert [c["status"] for c in calls] == [401, 401, 401]
    assert "insufficient_scope" in str(calls[-1]["body"])
    assert oauth_server.state.grants.count("refresh_token") <= 1


def test_a_target_that_is_not_a_path_is_refused(proxy, oauth_server, upstream, upstream_ca):
    """HTTP/2 lets a client send any `:path`; one that does not start with '/' is refused before anything else
    (a retry built from it once reached the host it named)."""
    import base64
    import socket

    import h2.config
    import h2.connection
    import h2.events

    assert authorize(proxy, oauth_server, upstream_ca[1]).returncode == 0
    proxy.start()
    oauth_server.state.revoke_access()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    basic = base64.b64encode(b"mailbot:mailbot-token-1").decode()
    sock.sendall(f"CONNECT api.oauth.example:443 HTTP/1.1\r\nHost: api.oauth.example:443\r\n"
                 f"Proxy-Authorization: Basic {basic}\r\n\r\n".encode())
    assert b" 200 " in sock.recv(4096).split(b"\r\n")[0]
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    context.set_alpn_protocols(["h2"])
    tls = context.wrap_socket(sock, server_hostname="api.oauth.example")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "api.oauth.example"),
                          (":path", f"@127.0.0.1:{upstream.port}/stolen")], end_stream=True)
    tls.sendall(conn.data_to_send())
    status, body, done = None, b"", False
    while not done and (chunk := tls.recv(65535)):
        for event in conn.receive_data(chunk):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers)[b":status"]
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                done = True
        tls.sendall(conn.data_to_send())
    tls.close()
    assert status == b"403" and b"is not a path starting with" in body
    assert upstream.state.seen == [] and oauth_server.state.api_calls == []


def test_401_with_a_revoked_grant_is_denied(proxy, oauth_server, upstream_ca):
    """The access token dies early and the grant with it: the 401 becomes a denial naming the refusal."""
    oauth_server.state.lifetime = 3600  # no expiry during the test: only the provider's revocation causes the 401
    assert authorize(proxy, oauth_server, upstream_ca[1]).returncode == 0
    proxy.start()
    oauth_server.state.revoke_refresh()
    call = agent_calls(proxy, 0)[0]
    assert call["status"] == 403 and "refused its access token (401)" in str(call["body"])
    assert "invalid_grant" in str(call["body"])


def test_without_tokens_requests_are_denied(proxy, oauth_server):
    """Before `authorize`, a request to the bound host is denied, not sent bare."""
    proxy.start()
    call = agent_calls(proxy, 0)[0]
    assert call["status"] == 403 and "run `goex-proxy authorize api`" in str(call["body"])
    assert oauth_server.state.api_calls == []


def test_authorize_ignores_a_forged_state(proxy, oauth_server):
    """A redirect that does not carry the state this command made is turned away; the command waits on for the real
    one (here: until its timeout) and stores nothing."""
    proc = subprocess.Popen([*GOEX, "authorize", "api", "--config", str(proxy.config), "--no-browser", "--timeout", "4"],
                            env=proxy.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    redirect = ""
    for line in proc.stderr:
        if "Waiting for the provider to redirect to" in line:
            redirect = line.split("redirect to ")[1].split()[0]
            break
    assert redirect.startswith("http://127.0.0.1:")
    forged = requests.get(redirect + "?code=stolen&state=forged", timeout=10)
    assert forged.status_code == 400 and "not the answer" in forged.text
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "no answer" in stderr and "nothing was stored" in stderr
    assert oauth_server.state.grants == [], "the forged code was never exchanged"
    listed = {json.loads(line)["credential"]: json.loads(line)
              for line in proxy.cli("secrets", "list", "--json").stdout.splitlines()}
    assert listed["api"]["stored"] is False


def test_two_workers_refresh_one_at_a_time(proxy, oauth_server, upstream_ca):
    """Both workers of `run --workers 2` need fresh tokens at each expiry; the provider rotates refresh tokens and
    refuses a second use of one, so a worker that refreshed on its own would be refused: they share the refresh."""
    assert authorize(proxy, oauth_server, upstream_ca[1]).returncode == 0
    proxy.start(workers=2)
    served: set[object] = set()
    # Each call is a new connection, which the kernel hands to either worker: in a rare run every call after each
    # refresh lands on the worker that made it, so the other never has to take one. Up to three spells of calls.
    for _ in range(3):
        calls = agent_calls(proxy, 6.0)
        assert [c["status"] for c in calls] == [200] * len(calls), calls
        served |= {json.loads(str(c["body"]))["token_serial"] for c in calls}
        assert "refreshing its access token failed" not in proxy.log_text()
        if "took another goex-proxy's refreshed" in proxy.log_text():
            break
    assert len(served) >= 3
    assert "took another goex-proxy's refreshed" in proxy.log_text()  # the second worker took the first one's
