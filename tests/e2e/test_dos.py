"""Denial of service against the supervisor, each from one client, none stalling the others: silent connections,
connections past an agent's cap, stalled request heads, idle connections, oversized heads and bodies, and HTTP/2
stream resets, each against a real proxy over real sockets with small limits; another agent is served throughout."""

from __future__ import annotations

import base64
import resource
import select
import socket
import ssl
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest
import requests

from tests.conftest import GITHUB_URL, GOEX, TOKENS, read_head, wait_port

pytestmark = pytest.mark.e2e

POLICY = {"github": """
    version: 1
    name: github
    rules:
      - name: read and write repos
        allow: {host: api.github.com, methods: [GET, POST, PUT], path: "/repos/**"}
      - name: echo
        allow: {host: api.github.com, methods: [GET], path: /echo}
      - name: post to slack
        allow: {host: slack.com, methods: [POST], path: "/api/**"}
"""}
#: How long a test waits for something that should happen within a second or two.
DEADLINE = 15.0


def started(make_proxy, **limits: Any):
    """A proxy with POLICY and these `limits:` (YAML values as written)."""
    lines = "".join(f"\n  {key}: {value}" for key, value in limits.items())
    return make_proxy(POLICY, extra_config=f"limits:{lines}\n" if limits else "")


def auth(agent: str) -> str:
    return "Basic " + base64.b64encode(f"{agent}:{TOKENS[agent]}".encode()).decode()


def served(proxy, agent: str = "slackbot") -> bool:
    """One ordinary HTTPS request of `agent` through the proxy is answered by the upstream."""
    r = requests.get(GITHUB_URL, proxies={"https": proxy.proxy_url(agent)}, verify=str(proxy.ca_cert), timeout=30)
    return r.status_code == 200


def closed(sock: socket.socket, wait: float = 0.2) -> bool:
    """Whether the proxy has closed this connection (what it had sent before is read and dropped)."""
    sock.settimeout(wait)
    try:
        while sock.recv(65536):
            pass
        return True
    except (TimeoutError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True


def eventually(check: Callable[[], bool], deadline: float = DEADLINE) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.1)
    return check()


def read_response(sock: socket.socket) -> bytes:
    """Everything until the proxy closes the connection or goes quiet for a second."""
    sock.settimeout(1.0)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, OSError):
        pass
    return data


def tunnel(proxy, agent: str = "mailbot") -> tuple[socket.socket, bytes]:
    """A CONNECT to api.github.com:443 as `agent`: the raw socket and the proxy's answer's head."""
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    raw.sendall(f"CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\n"
                f"Proxy-Authorization: {auth(agent)}\r\n\r\n".encode())
    return raw, read_head(raw)


class H2Client:
    """HTTP/2 over a CONNECT tunnel, frame by frame (the `h2` library checks nothing we send)."""

    def __init__(self, proxy, agent: str = "mailbot") -> None:
        raw, head = tunnel(proxy, agent)
        assert head.startswith(b"HTTP/1.1 200"), head
        context = ssl.create_default_context(cafile=str(proxy.ca_cert))
        context.set_alpn_protocols(["h2"])
        self.sock = context.wrap_socket(raw, server_hostname="api.github.com")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                                                         validate_outbound_headers=False))
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def start(self, method: str, path: str, extra: list[tuple[str, str]] | None = None) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", method), (":scheme", "https"), (":authority", "api.github.com"),
                                        (":path", path), *(extra or [])], end_stream=True)
        self.flush()
        return stream

    def reset(self, stream: int) -> None:
        self.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    def events_until_closed(self, deadline: float = DEADLINE) -> list[Any]:
        """Every event until the proxy closes the connection (or `deadline` passes)."""
        out: list[Any] = []
        self.sock.settimeout(0.5)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except OSError:
                break
            if not data:
                break
            try:
                out += self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                break
            if any(isinstance(e, h2.events.ConnectionTerminated) for e in out):
                break
        return out


# -- connections ---------------------------------------------------------------------------------------------------


def test_silent_connections_past_an_address_share_lose_their_oldest_and_another_agent_is_served(make_proxy):
    """Connections that never send a request naming an agent are counted per peer address: past
    `max_unidentified_per_address` the oldest of them are closed to admit new ones, so a client holding many silent
    connections loses its own first and any other agent, on the same address or not, is still served."""
    proxy = started(make_proxy, max_unidentified_per_address=4)
    silent = []
    for _ in range(10):
        silent.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=5))
        time.sleep(0.05)
    assert eventually(lambda: all(closed(s) for s in silent[:6])), "the oldest silent connections stay open"
    assert not any(closed(s) for s in silent[6:]), "the newest silent connections were closed too"
    assert served(proxy)
    assert "had not sent a request naming an agent" in proxy.log_text()
    for s in silent:
        s.close()


def test_an_agent_past_its_connection_cap_is_refused_and_another_agent_is_served(make_proxy):
    """An agent's connections beyond `max_connections_per_agent` are answered 429 and closed, recorded as denied;
    another agent is served meanwhile, and once the agent closes one it may open another."""
    proxy = started(make_proxy, max_connections_per_agent=3)
    held = [tunnel(proxy)[0] for _ in range(3)]
    extra, head = tunnel(proxy)
    assert head.startswith(b"HTTP/1.1 429"), head
    assert closed(extra, 5)
    assert served(proxy, "slackbot")
    refused = [r for r in proxy.rows() if r["method"] == "CONNECT"]
    assert len(refused) == 1 and refused[0]["agent"] == "mailbot" and refused[0]["decision"] == "deny"
    assert "limits.max_connections_per_agent" in refused[0]["reason"]
    held.pop().close()
    assert eventually(lambda: tunnel(proxy)[1].startswith(b"HTTP/1.1 200"))
    for s in held:
        s.close()


def test_accepting_stays_within_the_open_file_limit(make_proxy):
    """With an open-file limit of 256 (`max_connections: auto` makes that 32 connections), 300 silent connections
    never exhaust it: past the cap the oldest silent ones are closed, the accept loop keeps serving, an agent is
    served, and the log has no traceback."""
    proxy = make_proxy(POLICY, start=False)
    limit = (256, 256)
    log = open(proxy.log_path, "ab")
    proxy.proc = subprocess.Popen([*GOEX, "run", "--config", str(proxy.config)], env=proxy.env, stdout=log,
                                  stderr=subprocess.STDOUT,
                                  preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit))
    wait_port(proxy.port, proc=proxy.proc)
    silent = [socket.create_connection(("127.0.0.1", proxy.port), timeout=5) for _ in range(300)]
    assert eventually(lambda: sum(not closed(s, 0.01) for s in silent) <= 32)
    assert served(proxy)
    text = proxy.log_text()
    assert "Traceback" not in text and "Too many open files" not in text, text[-3000:]
    for s in silent:
        s.close()


# -- timeouts --------------------------------------------------------------------------------------------------------


def test_a_client_that_stalls_inside_its_request_head_is_closed_after_the_header_timeout(make_proxy):
    """Half a header line, then nothing: closed after `header_timeout`; so is a connection that sends nothing.
    An agent is served meanwhile."""
    proxy = started(make_proxy, header_timeout="1s", idle_timeout="1h")
    stalled = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    stalled.sendall(b"GET http://api.github.com/repos/octo/hello HTTP/1.1\r\nHost: api.gi")
    silent = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    assert served(proxy)
    assert eventually(lambda: closed(stalled) and closed(silent))
    assert "without a complete request head for 1s (limits.header_timeout)" in proxy.log_text()


def test_a_connection_idle_between_requests_is_closed_after_the_idle_timeout(make_proxy):
    """A keep-alive connection whose request was answered is closed once it has been idle for `idle_timeout`, and
    not before its first request's head was due (`header_timeout` is longer here)."""
    proxy = started(make_proxy, header_timeout="1h", idle_timeout="1s")
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(f"GET http://api.github.com/repos/octo/hello HTTP/1.1\r\nHost: api.github.com\r\n"
                 f"Proxy-Authorization: {auth('mailbot')}\r\n\r\n".encode())
    sock.settimeout(10)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    waiting = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    assert eventually(lambda: closed(sock))
    assert not closed(waiting, 0.5), "a connection waiting for its first request was closed by the idle timeout"
    assert "idle between requests for 1s (limits.idle_timeout)" in proxy.log_text()


# -- heads and bodies --------------------------------------------------------------------------------------------------


def test_an_http1_request_head_over_the_cap_is_refused_with_431(make_proxy, upstream):
    """A request head over `max_header_bytes` is answered 431 and the connection closed, before it is parsed; the
    upstream sees nothing, and nothing is recorded (no request was read)."""
    proxy = started(make_proxy, max_header_bytes="16KiB")
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(f"GET http://api.github.com/repos/octo/hello HTTP/1.1\r\nHost: api.github.com\r\n"
                 f"Proxy-Authorization: {auth('mailbot')}\r\nX-Pad: {'a' * (64 << 10)}\r\n\r\n".encode())
    answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 431") and b"limits.max_header_bytes" in answer, answer[:300]
    assert closed(sock)
    assert upstream.seen_paths() == [] and proxy.rows() == []
    assert served(proxy)


def test_an_http2_header_list_over_the_cap_closes_the_connection(make_proxy, upstream):
    """Over HTTP/2 the same cap is the advertised SETTINGS_MAX_HEADER_LIST_SIZE: a larger header list closes the
    connection, and the upstream sees nothing."""
    proxy = started(make_proxy, max_header_bytes="16KiB")
    client = H2Client(proxy)
    client.start("GET", "/repos/octo/hello", [("x-pad", "a" * (32 << 10))])
    events = client.events_until_closed()
    assert not any(isinstance(e, h2.events.ResponseReceived) for e in events)
    assert upstream.seen_paths() == []
    assert "header list is over 16 KiB (limits.max_header_bytes)" in proxy.log_text()


def post_head(path: str, host: str = "api.github.com", content_type: str = "application/octet-stream",
              **headers: str) -> bytes:
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (f"POST http://{host}{path} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {auth('mailbot')}\r\n"
            f"Content-Type: {content_type}\r\n{lines}\r\n").encode()


def test_a_request_body_over_the_cap_is_refused_with_413_before_it_is_sent(make_proxy, upstream):
    """A Content-Length over `max_request_body` is answered 413 from the head alone (the body is never read); a
    chunked body is cut at the cap; neither reaches the upstream, and the log says which cap, for whom."""
    proxy = started(make_proxy, max_request_body="1MiB")
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(post_head("/repos/octo/hello/notes", Content_Length=str(256 << 20)))
    answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"limits.max_request_body" in answer, answer[:300]

    chunked = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    chunked.sendall(post_head("/repos/octo/hello/notes", Transfer_Encoding="chunked"))
    chunk = b"%x\r\n%s\r\n" % (64 << 10, b"x" * (64 << 10))
    for _ in range(64):  # 4 MiB, if the proxy took it all; it answers (and closes) once 1 MiB is past
        if select.select([chunked], [], [], 0)[0]:
            break
        try:
            chunked.sendall(chunk)
        except OSError:
            break
    answer = read_response(chunked)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert upstream.seen_paths() == []
    assert "the request body is over 1 MiB (limits.max_request_body); answered 413" in proxy.log_text()
    assert "mailbot" in proxy.log_text()
    assert served(proxy)


def test_a_host_may_have_a_larger_request_body_cap(make_proxy, upstream):
    """`limits.hosts` raises the cap for the hosts it names, and only for them."""
    proxy = make_proxy(POLICY, extra_config=textwrap.dedent("""\
        limits:
          max_request_body: 1MiB
          hosts:
            slack.com: {max_request_body: 4MiB}
        """))
    body = b"x" * (2 << 20)
    for host, status in (("slack.com", b"HTTP/1.1 200"), ("api.github.com", b"HTTP/1.1 413")):
        path = "/api/files.upload" if host == "slack.com" else "/repos/octo/hello/notes"
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        sock.sendall(post_head(path, host, Content_Length=str(len(body))))
        try:
            sock.sendall(body)
        except OSError:
            pass
        answer = read_response(sock)
        assert answer.startswith(status), (host, answer[:300])
    assert upstream.seen_paths() == ["/api/files.upload"]


def test_a_response_body_over_the_cap_is_withheld_and_the_row_says_it_was_sent(make_proxy, upstream):
    """An upstream answer over `max_response_body` reaches the agent as a 502; the audit row records that the
    request was sent and answered, and why the answer was withheld."""
    proxy = started(make_proxy, max_response_body="1KiB")
    r = requests.get("https://api.github.com/echo", headers={"X-Pad": "a" * 2048}, timeout=30,
                     proxies={"https": proxy.proxy_url()}, verify=str(proxy.ca_cert))
    assert r.status_code == 502 and "limits.max_response_body" in r.text
    assert upstream.seen_paths() == ["/echo"]
    assert eventually(lambda: proxy.rows()[0]["error"] is not None)
    [row] = proxy.rows()
    assert row["status"] is None
    assert row["error"].startswith("the request was sent and answered 200, but the response body is over 1 KiB")


# -- HTTP/2 resets ---------------------------------------------------------------------------------------------------


def test_a_request_reset_before_it_was_forwarded_is_recorded_as_not_sent(make_proxy, upstream):
    """A PUT whose stream the client resets while the proxy is still reading the resource's pre-image (the upstream
    holds that read) is never forwarded, and its audit row says so."""
    proxy = started(make_proxy)
    upstream.state.hold.add("/repos/octo/held")
    client = H2Client(proxy)
    stream = client.start("PUT", "/repos/octo/held")
    assert eventually(lambda: upstream.seen_paths() == ["/repos/octo/held"]), "the pre-image read never came"
    client.reset(stream)
    time.sleep(0.5)  # the reset reaches the proxy before the pre-image read is answered
    upstream.state.unhold.set()
    assert eventually(lambda: bool(proxy.rows()) and proxy.rows()[0]["error"] is not None)
    [row] = proxy.rows()
    assert row["method"] == "PUT" and row["status"] is None
    assert row["error"] == "not sent: stream reset by client (CANCEL)"
    assert [s.method for s in upstream.state.seen] == ["GET"]


def test_rapid_reset_closes_the_connection_and_another_client_is_served(make_proxy, upstream):
    """Streams opened and reset at once: past `http2_max_resets` the connection is closed (GOAWAY, ENHANCE_YOUR_CALM);
    another agent is served while it goes on; every row of a reset stream either was forwarded (the upstream saw it)
    or says it was not sent, and none is left without an outcome."""
    proxy = started(make_proxy, http2_max_resets="{count: 20, per: 10s}")
    client = H2Client(proxy)
    done = threading.Event()
    others: list[bool] = []

    def other_agent() -> None:
        while not done.is_set():
            others.append(served(proxy, "slackbot"))

    helper = threading.Thread(target=other_agent)
    helper.start()
    try:
        for i in range(100):
            try:
                client.reset(client.start("GET", f"/repos/octo/r{i}"))
            except OSError:
                break
        events = client.events_until_closed()
    finally:
        done.set()
        helper.join(60)
    [goaway] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert others and all(others)
    assert "the client reset more than 20 streams within 10s (limits.http2_max_resets)" in proxy.log_text()
    def flood() -> list[dict[str, Any]]:
        return [r for r in proxy.rows() if r["agent"] == "mailbot"]

    assert eventually(lambda: all(r["status"] is not None or r["error"] is not None for r in flood()))
    seen = set(upstream.seen_paths())
    for row in flood():
        if row["status"] is not None:
            assert row["path"] in seen, row
        elif row["error"].startswith("not sent: "):
            assert row["path"] not in seen, row


def test_a_large_body_is_parsed_off_the_event_loop_and_decided_as_a_small_one(make_proxy, upstream):
    """24 MiB of JSON objects take the policy seconds to parse (each checked for a key sent twice): another agent is
    served meanwhile, where the event loop held every request until it was done. The body is decided as a small one
    is: its key sent twice is refused; a large form's `_method` is read as the method it names."""
    proxy = started(make_proxy)
    big = b"[" + b"{}," * (8 << 20) + b'{"a": 1, "a": 2}]'
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.sendall(post_head("/repos/octo/hello/notes", content_type="application/json", Content_Length=str(len(big)))
                 + big)
    assert served(proxy, "slackbot")
    assert not select.select([sock], [], [], 0)[0], "the other agent waited for the large body's parse"
    answer = read_response(sock)
    deadline = time.monotonic() + 60
    while not answer and time.monotonic() < deadline:
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 403") and b"twice" in answer, answer[:300]

    form = b"_method=DELETE&pad=" + b"%41" * (100 << 10)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.sendall(post_head("/repos/octo/hello/notes", content_type="application/x-www-form-urlencoded",
                           Content_Length=str(len(form))) + form)
    answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 403") and b"method override DELETE" in answer, answer[:300]
    assert "/repos/octo/hello/notes" not in upstream.seen_paths()
