"""Each pipeline stage on mitmproxy test flows: normal behaviour, and fail closed (502, nothing forwarded) on a fault."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from mitmproxy.test import taddons, tflow

from goex_proxy.addons import decide as decide_module
from goex_proxy.addons import flowmeta
from goex_proxy.addons.decide import Decide
from goex_proxy.addons.identify import Identify
from goex_proxy.addons.record import Record
from goex_proxy.addons.route import Route
from goex_proxy.addons.scrub import Scrub
from goex_proxy.policy.engine import Decision, PolicySet
from goex_proxy.policy.load import check_policy_text
from tests.conftest import READ_PATH_POLICY, stage_state
from tests.hookrun import finished


@pytest.fixture
def state(tmp_path: Path):
    with stage_state(tmp_path, READ_PATH_POLICY) as s:
        yield s


def auth(user: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


def flow(**headers: str):
    f = tflow.tflow()  # GET http://address:22/path
    f.request.headers.update(headers)
    return f


def boom(*args, **kwargs):
    raise RuntimeError("collaborator failed")


def test_identify_sets_agent_and_strips_credentials(state) -> None:
    """A valid Proxy-Authorization names the agent and is not forwarded, nor is Proxy-Connection (on plain HTTP a
    client sends it to the proxy, for the proxy)."""
    f = flow(**{"Proxy-Authorization": auth("bot", "bot-token-4242"), "Proxy-Connection": "keep-alive"})
    with taddons.context():
        Identify(state).requestheaders(f)
    assert flowmeta.agent(f) == "bot" and f.response is None
    assert "Proxy-Authorization" not in f.request.headers and "Proxy-Connection" not in f.request.headers


def test_a_token_too_short_to_be_a_secret_proves_nothing(state, monkeypatch) -> None:
    """An agent whose token (from the environment, where config checks cannot see it) is a few characters is
    refused like a wrong token, even when the right one is sent."""
    from goex_proxy.config import Agent
    from goex_proxy.secretref import SecretRef

    monkeypatch.setenv("GOEX_TEST_WEAK_TOKEN", "abc")
    state.config.agents["weak"] = Agent("weak", SecretRef(env="GOEX_TEST_WEAK_TOKEN"))
    f = flow(**{"Proxy-Authorization": auth("weak", "abc")})
    with taddons.context():
        Identify(state).requestheaders(f)
    assert f.response is not None and f.response.status_code == 407 and flowmeta.agent(f) is None


@pytest.mark.parametrize("header", [None, auth("bot", "wrong"), auth("ghost", "bot-token-4242"), "Bearer tok", "Basic !!!"])
def test_identify_refuses_with_407(state, header) -> None:
    """Missing, wrong, unknown or malformed credentials answer 407."""
    f = flow(**({"Proxy-Authorization": header} if header else {}))
    with taddons.context():
        Identify(state).requestheaders(f)
    assert f.response is not None and f.response.status_code == 407
    assert flowmeta.decision(f).effect == "deny"


UNDO_HEADERS = {"X-Goex-Undo-Agent": "bot", "X-Goex-Undo-Of": "0000000000001", "X-Goex-Undo-Request-Id": "01JD3K2M5X0A1"}


def test_only_the_undo_identity_may_act_for_an_agent_or_choose_a_request_id(state) -> None:
    """An agent's undo headers are stripped and ignored; `goex-proxy undo` (its per-run token) has them honoured."""
    state.undo_token = "per-run-token"
    agent = flow(**{"Proxy-Authorization": auth("bot", "bot-token-4242")}, **UNDO_HEADERS)
    undo = flow(**{"Proxy-Authorization": auth("goex-undo", "per-run-token")}, **UNDO_HEADERS)
    with taddons.context():
        Identify(state).requestheaders(agent)
        Identify(state).requestheaders(undo)
    assert not any(h in agent.request.headers for h in UNDO_HEADERS) and flowmeta.undo_of(agent) is None
    assert flowmeta.request_id(agent) != "01JD3K2M5X0A1"
    assert flowmeta.agent(undo) == "bot" and flowmeta.undo_of(undo) == "0000000000001"
    assert flowmeta.request_id(undo) == "01JD3K2M5X0A1" and not any(h in undo.request.headers for h in UNDO_HEADERS)


def test_the_undo_identity_cannot_choose_a_malformed_request_id(state) -> None:
    state.undo_token = "per-run-token"
    f = flow(**{"Proxy-Authorization": auth("goex-undo", "per-run-token")},
             **{**UNDO_HEADERS, "X-Goex-Undo-Request-Id": "x'; DROP TABLE"})
    with taddons.context():
        Identify(state).requestheaders(f)
    assert f.response is not None and f.response.status_code == 407

def test_identify_fails_closed(state, monkeypatch) -> None:
    """If checking credentials raises, the request gets 502 instead of passing unauthenticated."""
    monkeypatch.setattr(Identify, "authenticate", boom)
    f = flow(**{"Proxy-Authorization": auth("bot", "bot-token-4242")})
    with taddons.context():
        Identify(state).requestheaders(f)
    assert f.response.status_code == 502 and b"identify" in f.response.content


def test_decide_allows_and_denies(state) -> None:
    """An allowed request gets no response (it will be forwarded); a denied one gets 403 with the reason."""
    ok, bad = flow(), flow()
    bad.request.method = "DELETE"
    for f in (ok, bad):
        flowmeta.set_agent(f, "bot")
    with taddons.context():
        finished(Decide(state).request(ok))
        finished(Decide(state).request(bad))
    assert ok.response is None and flowmeta.decision(ok).effect == "allow"
    assert bad.response.status_code == 403 and b"no rule allows DELETE address/path" in bad.response.content


@pytest.mark.parametrize("field", [(b"x-a", b"v\r\nX-Evil: 1"), (b"x-a", b"v\rw"), (b"x-a", b"v\x00"),
                                   (b"x a", b"v"), (b"x:a", b"v"), (b"", b"v")])
def test_decide_refuses_fields_that_would_split_a_message_both_ways(state, field) -> None:
    """A request with such a header or trailer gets 403 before policy; a response with one is replaced by a 502."""
    from mitmproxy import http

    as_header, as_trailer, answered = flow(), flow(), flow()
    as_header.request.headers.fields += (field,)
    as_trailer.request.trailers = http.Headers([field])
    for f in (as_header, as_trailer, answered):
        flowmeta.set_agent(f, "bot")
    with taddons.context():
        finished(Decide(state).request(as_header))
        finished(Decide(state).request(as_trailer))
        finished(Decide(state).request(answered))
        answered.response = tflow.tresp()
        answered.response.headers.fields += (field,)
        Decide(state).response(answered)
    for f in (as_header, as_trailer):
        assert f.response.status_code == 403 and b"refused before policy" in f.response.content
        assert flowmeta.decision(f).rule == "request-fields"
    assert answered.response.status_code == 502 and b"malformed" in answered.response.content


def test_decide_fails_closed(state, monkeypatch) -> None:
    """If the policy engine raises, the request gets 502 and is not forwarded."""
    monkeypatch.setattr(decide_module, "decide", boom)
    f = flow()
    flowmeta.set_agent(f, "bot")
    with taddons.context():
        finished(Decide(state).request(f))
    assert f.response.status_code == 502 and b"decide" in f.response.content


def test_decide_fails_closed_on_a_raw_tcp_stream(state, monkeypatch) -> None:
    """If deciding a raw TCP stream raises, its upstream connection is refused and nothing of it is passed on."""
    monkeypatch.setattr(decide_module, "decide", boom)
    f = tflow.ttcpflow()
    f.server_conn.timestamp_start = None
    f.metadata.clear()
    with taddons.context():
        Decide(state).tcp_start(f)
        assert f.server_conn.error and "decide" in f.server_conn.error and f.killable is False
        f.messages[-1].content = b"payload"
        Decide(state).tcp_message(f)
    assert f.messages[-1].content == b""


def test_record_writes_before_forwarding(state) -> None:
    """The request row is committed by the time the hook returns; the outcome comes with the response."""
    f = flow()
    flowmeta.set_agent(f, "bot")
    flowmeta.set_decision(f, Decision("allow", "ok", "p/read"))
    f.response = None
    with taddons.context():
        asyncio.run(Record(state).request(f))
    import sqlite3

    from goex_proxy.audit import layout
    rows = [(r["agent"], r["decision"], r["status"]) for r in layout.read(  # the agent as its name (kept by id)
        sqlite3.connect(state.config.audit_db), "SELECT agent, decision, status FROM requests")]
    assert rows == [("bot", "allow", None)] and f.response is None


def test_record_refuses_an_undecided_request(state) -> None:
    """A request that reaches record with no allow decision is answered 502, never forwarded."""
    f = flow()
    f.response = None
    with taddons.context():
        asyncio.run(Record(state).request(f))
    assert f.response.status_code == 502


def test_record_fails_closed(state, monkeypatch) -> None:
    """If the audit write fails, the request gets 502 and is not forwarded."""
    monkeypatch.setattr(state.writer, "awaited_intent", boom)
    f = flow()
    flowmeta.set_decision(f, Decision("allow", "ok", "p/read"))
    f.response = None
    with taddons.context():
        asyncio.run(Record(state).request(f))
    assert f.response.status_code == 502 and b"record" in f.response.content


def test_a_request_still_in_flight_as_the_proxy_stops_is_refused_in_one_line(state, caplog) -> None:
    """Stopping closes the audit writer while mitmproxy may still hand a stage a request: it is answered 502, never
    forwarded, and said in one line (it was an AssertionError's traceback in the person's terminal)."""
    writer, state.writer = state.writer, None
    f = flow()
    flowmeta.set_decision(f, Decision("allow", "ok", "p/read"))
    f.response = None
    with taddons.context():
        asyncio.run(Record(state).request(f))
    state.writer = writer  # closed by the fixture
    assert f.response.status_code == 502
    assert "the audit log is closed: goex-proxy is stopping" in caplog.text and "Traceback" not in caplog.text
    assert all(r.exc_info is None for r in caplog.records)


def test_route_fails_closed(state, monkeypatch) -> None:
    """If looking up a route raises, the request gets 502 rather than going to the unrouted host."""
    monkeypatch.setattr(type(state.config), "route_for", boom)
    f = flow()
    f.response = None
    with taddons.context():
        Route(state).request(f)
    assert f.response.status_code == 502


def test_route_refuses_connection_on_fault(state, monkeypatch) -> None:
    """If routing a connection raises, the connection is refused, not opened to the original address."""
    from mitmproxy.proxy import server_hooks
    monkeypatch.setattr(type(state.config), "route_for", boom)
    f = flow()
    data = server_hooks.ServerConnectionHookData(server=f.server_conn, client=f.client_conn)
    with taddons.context():
        Route(state).server_connect(data)
    assert data.server.error


def test_route_redirects_connection(state) -> None:
    """A routed host's connection goes to the route's address; the request keeps its host."""
    from mitmproxy.proxy import server_hooks
    f = flow()
    f.server_conn.address = ("address", 22)
    data = server_hooks.ServerConnectionHookData(server=f.server_conn, client=f.client_conn)
    with taddons.context():
        Route(state).server_connect(data)
    assert data.server.address == ("127.0.0.1", 9) and f.request.host == "address"


def test_scrub_strips_spoofed_headers(state) -> None:
    """X-Goex-* headers from upstream are removed and the real request id added."""
    f = tflow.tflow(resp=True)
    f.response.headers["X-Goex-Decision"] = "allow"
    f.response.headers["x-goex-rule"] = "forged"
    with taddons.context():
        Scrub(state).responseheaders(f)
    assert "x-goex-rule" not in f.response.headers and "X-Goex-Decision" not in f.response.headers
    assert f.response.headers["X-Goex-Request-Id"] == flowmeta.request_id(f)


def test_scrub_fails_closed(state, monkeypatch) -> None:
    """If scrubbing raises, the agent gets 502 instead of an unscrubbed response."""
    monkeypatch.setattr(flowmeta, "request_id", boom)
    f = tflow.tflow(resp=True)
    f.response.headers["X-Goex-Rule"] = "forged"
    with taddons.context():
        Scrub(state).responseheaders(f)
    assert f.response.status_code == 502 and "X-Goex-Rule" not in f.response.headers


def test_preimage_fails_closed(state, monkeypatch) -> None:
    """If choosing or building the pre-image read raises, the request gets 502 and is not forwarded."""
    from goex_proxy.addons import preimage as preimage_module
    from goex_proxy.presets import undo_dir
    from goex_proxy.undo.rules import load_packs

    state.undo_rules = load_packs([undo_dir() / "rest.yaml"])
    monkeypatch.setattr(preimage_module, "preimage_read", boom)
    f = flow()
    f.request.method = "PUT"
    with taddons.context():
        assert preimage_module.Preimage(state).request(f) is None  # failed before any read was started
    assert f.response.status_code == 502 and b"preimage" in f.response.content


def test_preimage_read_fails_closed(state, monkeypatch) -> None:
    """The read itself runs after the hook returned (a coroutine mitmproxy awaits): a failure there blocks too."""
    from goex_proxy.addons import preimage as preimage_module
    from goex_proxy.presets import undo_dir
    from goex_proxy.undo.rules import load_packs

    state.undo_rules = load_packs([undo_dir() / "rest.yaml"])
    monkeypatch.setattr(preimage_module.flowmeta, "set_preimage", boom)
    f = flow()
    f.request.method = "DELETE"
    with taddons.context():
        pending = preimage_module.Preimage(state).request(f)
        assert pending is not None
        asyncio.run(pending)
    assert f.response.status_code == 502 and b"preimage" in f.response.content


def test_a_preimage_read_off_the_request_origin_is_never_made(state, monkeypatch) -> None:
    """A user rule whose read would go to another origin (here built from the agent's body) is not sent, so the
    credential injected into reads cannot leave the request's host; the failure is recorded as the pre-image."""
    from goex_proxy.addons import preimage as preimage_module
    from goex_proxy.undo.rules import check_pack_text

    rules, problems = check_pack_text("""
version: 1
rules:
  - name: put thing
    match: {hosts: [address], methods: [PUT], path: /things/*}
    class: needs-preimage
    preimage: {method: GET, url: "${request.json.mirror}"}
    undo: [{method: PUT, url: "${request.url}", body: "${pre.body}", why: puts it back}]
""", "user.yaml")
    assert rules, problems
    state.undo_rules = tuple(rules)
    monkeypatch.setattr(preimage_module.sendout, "send", boom)  # any read actually sent fails the test
    f = flow()
    f.request.method, f.request.path = "PUT", "/things/1"
    f.request.content = b'{"mirror": "http://elsewhere.example/collect"}'
    with taddons.context():
        pending = preimage_module.Preimage(state).request(f)
        assert pending is not None
        asyncio.run(pending)
    assert f.response is None  # the request itself goes on
    status, _, body = flowmeta.preimage(f) or (None, (), b"")
    assert status == 0 and b"not on the request's origin" in body

TWIN_POLICY = """
version: 1
name: p
rules:
  - name: deletes as trash
    allow: {host: gmail.googleapis.com, methods: [DELETE], path: "/gmail/v1/users/me/messages/*"}
    rewrite: reversible
"""


def _twin_flow(state, policy: str):
    from goex_proxy.addons.twin import Twin
    from goex_proxy.presets import undo_dir
    from goex_proxy.undo.rules import load_packs

    parsed, problems = check_policy_text(policy, "p.yaml")
    assert parsed is not None, problems
    state.policies = PolicySet.of([parsed])
    state.undo_rules = load_packs([undo_dir() / "gmail.yaml"])
    f = tflow.tflow()
    f.request.method, f.request.scheme, f.request.host, f.request.port = "DELETE", "https", "gmail.googleapis.com", 443
    f.request.path = "/gmail/v1/users/me/messages/m1"
    f.client_conn.sni = "gmail.googleapis.com"
    flowmeta.set_agent(f, "bot")
    with taddons.context():
        finished(Decide(state).request(f))
        assert flowmeta.decision(f).rewrite
        Twin(state).request(f)
    return f


def test_a_twin_the_policy_does_not_allow_is_not_sent_and_neither_is_the_original(state) -> None:
    f = _twin_flow(state, TWIN_POLICY)
    assert f.response is not None and f.response.status_code == 403
    assert b"allowed only as its reversible twin POST" in f.response.content and b"does not allow" in f.response.content


def test_an_allowed_twin_replaces_the_request(state) -> None:
    f = _twin_flow(state, TWIN_POLICY + """  - name: trash
    allow: {host: gmail.googleapis.com, methods: [POST], path: "/gmail/v1/users/me/messages/*/trash"}
""")
    assert f.response is None
    assert (f.request.method, f.request.path) == ("POST", "/gmail/v1/users/me/messages/m1/trash")
    assert flowmeta.path(f) == "/gmail/v1/users/me/messages/m1/trash"
    assert "sent as its reversible twin" in flowmeta.decision(f).reason


def test_rewrite_is_only_for_allow_rules_and_only_reversible() -> None:
    _, problems = check_policy_text(TWIN_POLICY.replace("rewrite: reversible", "rewrite: trash"), "p.yaml")
    assert any("'rules[0].rewrite' can only be 'reversible'" in str(p) for p in problems)
    deny = TWIN_POLICY.replace("allow:", "deny:")
    _, problems = check_policy_text(deny, "p.yaml")
    assert any("rewrite" in str(p) for p in problems)


def test_twin_fails_closed(state, monkeypatch) -> None:
    """If finding the twin raises, the request gets 502: neither it nor its twin is forwarded."""
    from goex_proxy.addons import twin as twin_module

    monkeypatch.setattr(twin_module, "twin_for", boom)
    f = _twin_flow(state, TWIN_POLICY)
    assert f.response.status_code == 502 and b"twin" in f.response.content


READINGS_POLICY = """
version: 1
name: readings
rules:
  - name: post to the api
    allow: {host: address, methods: [POST, GET], path: "/api/**"}
  - name: never delete files
    deny: {host: address, path: "/api/files.delete"}
  - name: this repo only as spelled
    allow: {host: address, methods: [GET], path: "/repos/Octo/*"}
"""


@pytest.mark.parametrize(("sentence", "method", "path", "headers", "body", "allowed"), [
    ("a POST the policy allows", "POST", "/api/chat.post", {}, b"", True),
    ("an override header naming a method no rule allows", "POST", "/api/chat.post",
     {"X-HTTP-Method-Override": "DELETE"}, b"", False),
    ("an X-HTTP-Method header", "POST", "/api/chat.post", {"X-HTTP-Method": "PUT"}, b"", False),
    ("a _method query parameter", "POST", "/api/chat.post?_method=DELETE", {}, b"", False),
    ("a _method form field", "POST", "/api/chat.post", {"Content-Type": "application/x-www-form-urlencoded"},
     b"_method=DELETE&x=1", False),
    ("an override naming an allowed method", "POST", "/api/chat.post", {"X-HTTP-Method-Override": "GET"}, b"", True),
    ("a denied path in capitals", "POST", "/api/FILES.DELETE", {}, b"", False),
    ("a denied path with a trailing slash", "POST", "/api/files.delete/", {}, b"", False),
    ("a denied path in capitals with a trailing slash", "POST", "/api/FILES.DELETE/", {}, b"", False),
    ("a denied path with a format suffix (Rails routes it to the same action)", "POST", "/api/files.delete.json", {},
     b"", False),
    ("a query key sent twice", "POST", "/api/chat.post?channel=C0BOTS&channel=C0RANDOM", {}, b"", False),
    ("a form field sent twice", "POST", "/api/chat.post", {"Content-Type": "application/x-www-form-urlencoded"},
     b"channel=C0BOTS&channel=C0RANDOM", False),
    ("a query key sent once", "POST", "/api/chat.post?channel=C0BOTS&text=hi", {}, b"", True),
    ("a key sent also as an array (PHP and Rails read the last)", "POST",
     "/api/chat.post?channel=C0BOTS&channel[]=C0RANDOM", {}, b"", False),
    ("a key PHP reads as another (. becomes _)", "POST", "/api/chat.post?channel_id=C0BOTS&channel.id=C9", {}, b"",
     False),
    ("distinct bracketed keys", "POST", "/api/chat.post?filter[a]=1&filter[b]=2", {}, b"", True),
    ("nested bracketed keys (Rails)", "POST", "/api/chat.post?user[name]=a&user[email]=b&user[tags][]=c", {}, b"",
     True),
    ("a key PHP reads without its leading space", "POST", "/api/chat.post?channel=C0BOTS&%20channel=C9", {}, b"",
     False),
    ("a key PHP cuts at a NUL", "POST", "/api/chat.post?channel=C0BOTS&channel%00x=C9", {}, b"", False),
    ("an unmatched [ PHP reads as _", "POST", "/api/chat.post?channel_id=C0BOTS&channel[id=C9", {}, b"", False),
    ("an appended and an indexed element (PHP overwrites)", "POST", "/api/chat.post?ids[]=1&ids[0]=2", {}, b"",
     False),
    ("what follows a ] (PHP ignores it)", "POST", "/api/chat.post?filter[a]=1&filter[a]x=2", {}, b"", False),
    ("a case-specific allow rule, spelled as it says", "GET", "/repos/Octo/hello", {}, b"", True),
    ("a JSON Content-Type over a form body", "POST", "/api/chat.post", {"Content-Type": "application/json"},
     b"channel=C0RANDOM", False),
    ("a form Content-Type over a JSON body", "POST", "/api/chat.post",
     {"Content-Type": "application/x-www-form-urlencoded"}, b'{"channel": "C0RANDOM"}', False),
    ("a JSON body declared JSON", "POST", "/api/chat.post", {"Content-Type": "application/json; charset=utf-8"},
     b'{"channel": "C0BOTS"}', True),
])
def test_every_reading_a_server_could_make_must_be_allowed(tmp_path, sentence, method, path, headers, body,
                                                          allowed) -> None:
    """Method overrides, case-insensitive and slash-lenient routers and a Content-Type that lies are decided the way
    servers would read them."""
    with stage_state(tmp_path, READINGS_POLICY) as state:
        f = flow(**headers)
        f.request.method, f.request.path, f.request.content = method, path, body
        flowmeta.set_agent(f, "bot")
        with taddons.context():
            finished(Decide(state).request(f))
    assert (f.response is None) is allowed, (sentence, f.response and f.response.content)


def test_a_request_without_identity_costs_a_compact_row(state) -> None:
    """No proxy credentials and megabytes of headers and path: the 407 row keeps neither headers nor body, and only
    the start of the path, so that any local process cannot fill the audit database."""
    f = flow(**{"X-Filler": "x" * 1_000_000})
    f.request.path = "/" + "p" * 100_000
    f.request.content = b"b" * 60_000
    with taddons.context():
        Identify(state).requestheaders(f)
        row = Record(state).request_row(f)
    assert f.response.status_code == 407
    assert row["req_headers"] is None and row["req_body"] is None and row["resp_body"] is None
    assert len(row["path"]) <= 512 and len(row["url"]) <= 512
    assert len(str(row)) < 4_000


def test_scrub_fails_closed_on_a_websocket_message(state, monkeypatch) -> None:
    """If scrubbing an upstream WebSocket message raises, that message is dropped and the connection ended, rather
    than relayed as it came (a 502 cannot be answered once the socket is open)."""
    from goex_proxy.credentials.redact import SecretScrubber

    state.scrubber = SecretScrubber({"s3cr3t-value": "<placeholder>"})
    monkeypatch.setattr(SecretScrubber, "stream", boom)
    f = tflow.twebsocketflow()
    f.websocket.messages[-1].from_client = False
    f.websocket.messages[-1].content = b"s3cr3t-value"
    with taddons.context():
        Scrub(state).websocket_message(f)
    assert f.websocket.messages[-1].dropped and not f.live


@pytest.mark.parametrize(("port", "url"), [(22, "http://[::1]:22/path"), (80, "http://[::1]/path")])
def test_an_ipv6_upstream_is_recorded_and_undone_at_a_url_that_names_it(state, port: int, url: str) -> None:
    """mitmproxy's URL of a request to an IPv6 address leaves out the brackets (`http://::1:22/path`): the row named
    no one address and port, and a URL parser (undo's plan, the pre-image read's origin check) refused it. The row,
    and the exchange undo rules are matched against, have the brackets."""
    from urllib.parse import urlsplit

    from goex_proxy.audit import layout

    f = flow()
    f.request.host, f.request.port = "::1", port
    flowmeta.set_agent(f, "bot")
    flowmeta.set_decision(f, Decision("allow", "allowed", "p/read"))
    row = Record(state).request_row(f)
    assert row["url"] == url
    assert flowmeta.request_url(f.request) == url  # what the pre-image read and the gate match undo rules against
    assert layout.url_of(row["scheme"], row["host"], row["port"], row["path"]) == url  # stored as derived, then
    assert urlsplit(row["url"]).hostname == "::1"
