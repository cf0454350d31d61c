"""The console's sign-in and serving, hardened, against a real console served on 127.0.0.1 and asked with httpx and
raw sockets: one-time, short-lived links stored hashed; sessions that end when idle and at a set age (an open live
log counting as activity); Sec-Fetch-Site on POSTs; `console.public_url`; the running console's file and the SSRF
guard that reads it; and a person served while a client holds hundreds of half-open connections."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import socket
import sqlite3
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from goex_proxy.approvals import served
from goex_proxy.approvals.served import HeadTimedProtocol
from goex_proxy.audit.store import connect
from goex_proxy.config import Config, load_config
from goex_proxy.console import app as console_app
from goex_proxy.console.auth import LINK_SECONDS, mint_link, redeem_link
from goex_proxy.console.server import serve_console
from goex_proxy.consoleconfig import running_consoles
from goex_proxy.errors import StateError
from goex_proxy.net.egress import Blocked, Pins
from tests.conftest import free_port
from tests.unit.test_console import Running, fill, write_config

LOOPBACK = ipaddress.ip_address("127.0.0.1")


@pytest.fixture
def state(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, "upstream: {block_private_networks: false}\n"))


@pytest.fixture
def console(state: Config) -> Iterator[Running]:
    running = Running(state)
    yield running
    running.close()


def cookie_of(console: Running, client: httpx.Client) -> str:
    return str(client.cookies[f"goex_console_{console.served.address[1]}"])


def test_a_link_signs_in_once_and_a_used_one_says_how_to_get_another(console: Running, state: Config) -> None:
    token = console.token()
    first = httpx.Client(base_url=console.base, timeout=10)
    assert first.get(f"/?token={token}").status_code == 303 and first.get("/").status_code == 200
    second = httpx.Client(base_url=console.base, timeout=10)
    again = second.get(f"/?token={token}")
    assert again.status_code == 401 and "set-cookie" not in again.headers
    assert "already used, or has expired" in again.text and "goex-proxy console link" in again.text
    assert second.get("/").status_code == 401
    back = first.get(f"/approvals?token={token}")  # the back button of the browser that used it: no 401
    assert back.status_code == 303 and back.headers["location"] == "/approvals" and "set-cookie" not in back.headers
    with sqlite3.connect(state.audit_db) as conn:
        rows = conn.execute("SELECT token_sha256, used_at, expires - made FROM console_links").fetchall()
    assert (hashlib.sha256(token.encode()).hexdigest(), pytest.approx(LINK_SECONDS)) in [(r[0], r[2]) for r in rows]
    assert all(token not in str(r) for r in rows)
    for path in state.state_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_a_link_past_its_time_opens_nothing_and_is_removed_later(console: Running, state: Config) -> None:
    conn = connect(state)
    try:
        old = mint_link(conn, time.time() - LINK_SECONDS - 1)
        r = httpx.get(f"{console.base}/?token={old}", timeout=10)
        assert r.status_code == 401 and "goex-proxy console link" in r.text
        mint_link(conn)
        left = {row[0] for row in conn.execute("SELECT token_sha256 FROM console_links")}
        assert hashlib.sha256(old.encode()).hexdigest() not in left
    finally:
        conn.close()


def test_two_redeems_of_one_token_sign_in_once(state: Config) -> None:
    # Eight connections at once, as eight console processes (or requests) would each have their own: a sqlite3
    # connection is not to be used by two threads at a time (the console's own is behind a lock).
    conns = [connect(state) for _ in range(8)]
    try:
        token = mint_link(conns[0])
        results: list[bool] = []
        threads = [threading.Thread(target=lambda c=c: results.append(redeem_link(c, token))) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(results) == [False] * 7 + [True]
        assert not redeem_link(conns[0], "not-a-token")
    finally:
        for c in conns:
            c.close()


def test_a_session_ends_when_idle_and_at_its_age_an_open_live_log_keeping_it(
        console: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = console.served.console.keys
    keys.idle = 1.0
    idle = console.client()
    time.sleep(0.6)
    assert idle.get("/approvals").status_code == 200  # a request restarts the idle clock
    time.sleep(0.6)
    assert idle.get("/approvals").status_code == 200
    time.sleep(1.2)
    assert idle.get("/approvals").status_code == 401, "idle for longer than the idle time"

    monkeypatch.setattr(console_app, "KEEPALIVE_S", 0.3)
    monkeypatch.setattr(console_app, "POLL_S", 0.1)
    streaming = console.client()
    stop = threading.Event()

    def listen() -> None:
        with streaming.stream("GET", "/events", timeout=15) as r:
            assert r.status_code == 200
            for _ in r.iter_lines():
                if stop.is_set():
                    return

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    time.sleep(2.2)  # twice the idle time, with no request but the stream's
    assert streaming.get("/approvals").status_code == 200, "an open live log is activity"
    stop.set()
    reader.join(5)

    keys.idle, keys.lifetime = 60.0, 1.0
    busy = console.client()
    for _ in range(3):
        assert busy.get("/approvals").status_code == 200
        time.sleep(0.25)
    time.sleep(0.5)
    assert busy.get("/approvals").status_code == 401, "older than its lifetime, however busy"


def test_a_post_from_a_browser_must_say_same_origin(console: Running, state: Config) -> None:
    [rid] = fill(state, [{}])
    client = console.client()
    csrf = console.served.console.keys.csrf(cookie_of(console, client))
    for headers in ({"Sec-Fetch-Site": "none"}, {"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
                    {"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:1"}):
        r = client.post("/review/seen", data={"id": rid, "csrf": csrf}, headers=headers)
        assert r.status_code == 403, headers
    assert client.post("/review/seen", data={"id": rid}, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 403
    ok = client.post("/review/seen", data={"id": rid, "csrf": csrf},
                     headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Origin": console.base})
    assert ok.status_code == 303
    plain = client.post("/review/seen", data={"id": rid, "csrf": csrf})  # a script sends no Sec-Fetch at all
    assert plain.status_code == 303


def test_the_running_consoles_file_says_where_it_is_while_it_runs(state: Config) -> None:
    running = Running(state)
    try:
        [found] = running_consoles(state.state_dir)
        assert found.base == running.base and found.listen == running.served.address and found.pid == os.getpid()
        assert stat.S_IMODE(found.path.stat().st_mode) == 0o600
    finally:
        running.close()
    assert running_consoles(state.state_dir) == [] and not found.path.exists()


def test_the_ssrf_guard_refuses_a_console_started_anywhere_over_the_state_directory(state: Config) -> None:
    port = free_port()
    egress = state.egress  # the config has no console section: only the running console's file says where
    assert egress.refusal("localhost", port, [LOOPBACK]) is None
    pins = Pins()
    assert asyncio.run(pins.addresses(egress, None, "127.0.0.1", port)) == [LOOPBACK]  # pinned, allowed
    running = RunningAt(state, ("127.0.0.1", port))
    try:
        assert "web console, which no agent may reach" in str(egress.refusal("localhost", port, [LOOPBACK]))
        with pytest.raises(Blocked, match="web console"):
            asyncio.run(pins.addresses(egress, None, "127.0.0.1", port))  # a pin made before it started too
        assert egress.refusal("localhost", port + 1, [LOOPBACK]) is None
    finally:
        running.close()
    assert egress.refusal("localhost", port, [LOOPBACK]) is None


class RunningAt(Running):
    """A console served at a given address (Running serves one on a port of its own choosing)."""

    def __init__(self, config: Config, listen: tuple[str, int]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.served = asyncio.run_coroutine_threadsafe(serve_console(config, listen),
                                                       self.loop).result(10)  # type: ignore[assignment]
        self.base = self.served.base


def test_a_public_url_is_the_name_the_console_answers_under_and_its_links_use(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "console.example")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    public = f"https://console.example:{port}"
    config = load_config(write_config(tmp_path, f"console: {{listen: '0.0.0.0:{port}', tls_cert: cert.pem, "
                                                f"tls_key: key.pem, public_url: '{public}'}}\n"))
    running = RunningAt(config, ("0.0.0.0", port))  # on every interface
    try:
        link = asyncio.run_coroutine_threadsafe(running.served.new_link(), running.loop).result(10)
        assert link.startswith(f"{public}/?token=")
        client = httpx.Client(base_url=f"https://127.0.0.1:{port}", timeout=10,
                              verify=ssl.create_default_context(cafile=tmp_path / "ca.pem"))
        host = {"Host": f"console.example:{port}"}
        r = client.get(f"/?token={link.partition('?token=')[2]}", headers=host)
        assert r.status_code == 303 and r.headers["set-cookie"].startswith(f"__Host-goex_console_{port}=")
        assert client.get("/", headers=host).status_code == 200
        assert client.get("/", headers={"Host": f"0.0.0.0:{port}"}).status_code == 400
        session = str(client.cookies[f"__Host-goex_console_{port}"])
        csrf = running.served.console.keys.csrf(session)
        [rid] = fill(config, [{}])
        assert client.post("/review/seen", data={"id": rid, "csrf": csrf},
                           headers={**host, "Origin": public, "Sec-Fetch-Site": "same-origin"}).status_code == 303
        assert client.post("/review/seen", data={"id": rid, "csrf": csrf},
                           headers={**host, "Origin": f"https://0.0.0.0:{port}"}).status_code == 403
        plain = httpx.Client(base_url=f"https://127.0.0.1:{port}", timeout=10, headers=host,
                             verify=ssl.create_default_context(cafile=tmp_path / "ca.pem"))
        plain.cookies.set(f"goex_console_{port}", session)  # the same value without the prefix opens nothing
        assert plain.get("/").status_code == 401
    finally:
        running.close()


def test_a_console_beyond_this_machine_without_a_public_url_does_not_start(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "console: {listen: '127.0.0.1:8791', tls_cert: c.pem, tls_key: k.pem}"
                                                "\n"))

    async def serve() -> None:
        await serve_console(config, ("0.0.0.0", 0))

    with pytest.raises(StateError, match="set console.public_url") as err:
        asyncio.run(serve())
    assert "\n" not in str(err.value)


def _half_open(port: int, count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # a request head never finished
        held.append(s)
    return held


def _closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_a_person_gets_through_while_200_half_open_connections_are_held_and_they_are_closed_in_time(
        console: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HeadTimedProtocol, "head_seconds", 2.0)
    port = console.served.address[1]
    client = console.client()
    held = _half_open(port, 200)
    try:
        started = time.monotonic()
        for path in ("/", "/approvals"):
            assert client.get(path).status_code == 200, "not 503 while the half-open ones are held"
        assert time.monotonic() - started < 2.0
        stop = time.monotonic() + 4.0
        while time.monotonic() < stop:  # a byte a while on each: still sending, never finishing
            for s in held:
                try:
                    s.send(b"a")
                except OSError:
                    pass
            time.sleep(0.4)
        assert all(_closed(s) for s in held), "a head not complete within head_seconds of its first byte is closed"
        assert client.get("/").status_code == 200
    finally:
        for s in held:
            s.close()


def test_past_the_connection_cap_the_oldest_waiting_connection_makes_room(
        console: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HeadTimedProtocol, "max_connections", 20)
    monkeypatch.setattr(served, "EVICT_AFTER", 0.5)  # only a connection that has waited that long is closed for room
    port = console.served.address[1]
    client = console.client()
    held = _half_open(port, 20)
    try:
        time.sleep(0.7)
        held += _half_open(port, 20)
        time.sleep(0.3)
        assert client.get("/").status_code == 200
        closed = [_closed(s) for s in held]
        assert all(closed[:19]) and not any(closed[-15:]), closed
    finally:
        for s in held:
            s.close()


def test_the_next_request_on_a_kept_alive_connection_has_the_same_head_deadline(
        console: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HeadTimedProtocol, "head_seconds", 1.0)
    with socket.create_connection(("127.0.0.1", console.served.address[1]), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: " + console.base.split("//")[1].encode() + b"\r\n\r\n")
        answer = b""
        while b"Not signed in" not in answer:
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401")
        time.sleep(1.5)  # idle between requests, within the keep-alive time: still open
        s.sendall(b"GET /approvals HTTP/1.1\r\n")
        started = time.monotonic()
        while time.monotonic() - started < 3.0 and not _closed(s):
            s.setblocking(True)
            try:
                s.sendall(b"X")  # a byte at a time: the keep-alive timer alone would never fire
            except OSError:
                break
            time.sleep(0.2)
        assert _closed(s) and time.monotonic() - started < 2.0, "closed a second after its first byte"


def test_console_connections_send_at_once() -> None:
    """The console's and link server's connections have TCP_NODELAY (asyncio sets it only on sockets it made): without
    it a page's body waited 40 ms for the browser's delayed ACK on every request after a connection's first."""
    import socket

    from goex_proxy.approvals.served import listening_socket

    with listening_socket("127.0.0.1", 0) as server, socket.create_connection(server.getsockname()[:2]):
        accepted, _ = server.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_a_client_that_never_reads_its_answers_is_closed(console: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of pipelined requests whose answers are never read held a request in progress for good (a stalled
    write has no deadline in uvicorn); now the connection is closed WRITE_SECONDS after its answers stop draining."""
    monkeypatch.setattr(served, "WRITE_SECONDS", 1.0)
    made = HeadTimedProtocol.connection_made

    def small_buffers(self: HeadTimedProtocol, transport: Any) -> None:  # so that 3,000 small answers fill them
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.set_write_buffer_limits(high=8192)
        made(self, transport)

    monkeypatch.setattr(HeadTimedProtocol, "connection_made", small_buffers)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's buffers fill at once
    s.connect(("127.0.0.1", console.served.address[1]))
    head = b"GET / HTTP/1.1\r\nHost: " + console.base.split("//")[1].encode() + b"\r\n\r\n"
    s.sendall(head * 3000)
    time.sleep(3.0)
    s.setblocking(False)
    ended = False
    try:
        for _ in range(10000):  # drain what was sent before the close, then see the end
            if s.recv(1 << 20) == b"":
                ended = True
                break
    except BlockingIOError:
        ended = False
    except OSError:
        ended = True
    finally:
        s.close()
    assert ended, "the server still holds a connection whose answers are never read"


def test_only_a_signed_in_persons_requests_count_against_the_cap(console: Running) -> None:
    """The guard answers before the cap: with no room at all, a stranger still gets 401 (so strangers' requests,
    however many or stalled, take no room), and the person gets 503."""
    capped = console.served.server.config.app.app
    assert isinstance(capped, served.Capped)
    capped.limit = 0
    stranger = httpx.get(console.base + "/", timeout=5)
    assert stranger.status_code == 401
    assert console.client().get("/").status_code == 503


def test_console_link_trusts_only_a_live_consoles_own_file(tmp_path: Path) -> None:
    """A file under consoles/ names the console `console link` writes a link for: one whose process started after it
    was written (its pid reused), a link to elsewhere, or a file others may write is not believed."""
    from goex_proxy.consoleconfig import running_consoles, say_running

    mine = say_running(tmp_path, ("127.0.0.1", 8791), "http://127.0.0.1:8791")
    assert [r.base for r in running_consoles(tmp_path)] == ["http://127.0.0.1:8791"]
    planted = mine.with_name("zz-planted.json")
    planted.write_text('{"listen": ["127.0.0.1", 9], "base": "http://attacker.example", "pid": 1}')
    planted.chmod(0o600)
    os.utime(planted, (1_000_000_000, 1_000_000_000))  # written "before" pid 1 started? no: long before boot
    assert all(r.base != "http://attacker.example" for r in running_consoles(tmp_path))
    linked = mine.with_name("zz-link.json")
    linked.symlink_to(mine)
    shared = mine.with_name("zz-shared.json")
    shared.write_text(mine.read_text())
    shared.chmod(0o644)
    assert [r.path for r in running_consoles(tmp_path)] == [mine]


def test_the_guard_sees_consoles_come_and_go_and_a_replaced_folder_of_them(tmp_path: Path) -> None:
    """The SSRF guard reads the consoles' folder's time through a descriptor; a console registered there is seen at
    the next check, and one registered in a folder that replaced it once the path is looked at again."""
    import shutil

    from goex_proxy.consoleconfig import RUNNING_DIR, RunningListens, say_running

    watch = RunningListens(tmp_path)
    assert watch() == []  # no console has run here: the folder is made, to be watched
    first = say_running(tmp_path, ("127.0.0.1", 8791), "http://127.0.0.1:8791")
    assert watch() == [("127.0.0.1", 8791)]
    first.unlink()
    assert watch() == []
    shutil.rmtree(tmp_path / RUNNING_DIR)
    say_running(tmp_path, ("127.0.0.1", 8792), "http://127.0.0.1:8792")  # in a new folder of that name
    watch._checked -= watch.RECHECK_S  # a second later
    assert watch() == [("127.0.0.1", 8792)]
