"""The web console over a real audit log, served by uvicorn on 127.0.0.1 and asked with httpx: the `console:` section,
the guard (Host, token, cookie, CSRF, headers), keyset pages, escaping, bodies by content type and chain status."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from goex_proxy.audit import blobs
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.config import Config, load_config
from goex_proxy.console.render import body_view
from goex_proxy.console.server import ConsoleServer, serve_console
from goex_proxy.consoleconfig import DEFAULT_LISTEN, Console
from goex_proxy.errors import ConfigError, StateError
from goex_proxy.ids import RequestIds, packed

SCRIPT = "<script>alert(1)</script>"


def write_config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\nagents: {}\npolicies: []\n" + text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, text))
    return [str(p) for p in err.value.problems]


def test_no_console_section_serves_none_from_run_and_a_section_defaults_to_loopback(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path)).console == Console()
    assert load_config(write_config(tmp_path, "console: {}\n")).console.listen == DEFAULT_LISTEN
    assert load_config(write_config(tmp_path, "console: {listen: '127.0.0.1:9999'}\n")).console.listen == \
        ("127.0.0.1", 9999)
    assert load_config(write_config(tmp_path, "console: false\n")).console == Console()


def test_a_console_beyond_this_machine_needs_tls(tmp_path: Path) -> None:
    found = problems(tmp_path, "console: {listen: '0.0.0.0:8791'}\n")
    assert len(found) == 1 and "not a loopback address" in found[0] and "TLS" in found[0], found
    tls = load_config(write_config(tmp_path, "console: {listen: '0.0.0.0:8791', tls_cert: c.pem, tls_key: k.pem, "
                                             "public_url: 'https://console.example:8791'}\n"))
    assert tls.console.tls and tls.console.tls_cert == tmp_path / "c.pem"
    nameless = problems(tmp_path, "console: {listen: '0.0.0.0:8791', tls_cert: c.pem, tls_key: k.pem}\n")
    assert len(nameless) == 1 and "console.public_url" in nameless[0], nameless
    assert any("both tls_cert and tls_key" in p for p in problems(tmp_path, "console: {tls_cert: c.pem}\n"))
    assert any("HOST:PORT" in p for p in problems(tmp_path, "console: {listen: 8791}\n"))


def test_bodies_are_shown_by_content_type() -> None:
    pretty = body_view(b'{"a":[1,2]}', 11, [("Content-Type", "application/json")])
    assert pretty["kind"] == "json" and '"a": [\n' in pretty["text"]
    assert body_view(b"plain words", 11, [("content-type", "text/plain")])["kind"] == "text"
    binary = body_view(bytes(range(256)) * 4, 2048, [])
    assert binary["kind"] == "hex" and binary["text"].startswith("00000000  00 01 02") and "2048 bytes" in \
        binary["note"]
    assert body_view(None, 0, [])["kind"] == "empty" and "not stored" in body_view(None, 99, [])["text"]


def fill(config: Config, rows: list[dict[str, Any]]) -> list[str]:
    ids, writer = RequestIds(), AuditWriter(config.audit_db, Seal(config.state_dir))
    made = []
    for i, extra in enumerate(rows):
        rid = ids.new(1_700_000_000 + i)
        row = {"id": rid, "ts": 1_700_000_000.0 + i, "agent": "bot", "method": "POST", "scheme": "https",
               "host": "slack.com", "port": 443, "path": f"/p{i}", "url": f"https://slack.com/p{i}",
               "req_headers": "[]", "req_body": b"", "decision": "allow", **extra}
        writer.record_intent(row).result(5)
        writer.record_outcome(rid, {"status": 200, "ended": 1.0, "duration_ms": 1.0, "resp_headers": "[]"}).result(5)
        made.append(rid)
    writer.close()
    return made


class Running:
    """A console served in a loop of its own thread, and a client that is signed in (or not)."""

    def __init__(self, config: Config) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.served: ConsoleServer = asyncio.run_coroutine_threadsafe(
            serve_console(config, ("127.0.0.1", 0)), self.loop).result(10)  # type: ignore[assignment]
        self.base = self.served.base

    def token(self) -> str:
        """A new sign-in link's token, minted as `goex-proxy console link` does."""
        link = asyncio.run_coroutine_threadsafe(self.served.new_link(), self.loop).result(10)
        return link.partition("?token=")[2]

    def client(self, signed_in: bool = True) -> httpx.Client:
        client = httpx.Client(base_url=self.base, timeout=10)
        if signed_in:
            r = client.get(f"/?token={self.token()}")
            assert r.status_code == 303 and r.headers["location"] == "/"
        return client

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.served.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def state(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path))


@pytest.fixture
def console(state: Config) -> Iterator[Running]:
    running = Running(state)
    yield running
    running.close()


def test_nothing_answers_without_the_token_and_a_wrong_token_opens_nothing(console: Running) -> None:
    anonymous = console.client(signed_in=False)
    for path in ("/", "/approvals", "/events", "/static/console.js", "/request/X", "/nothing"):
        r = anonymous.get(path)
        assert r.status_code == 401 and "Not signed in" in r.text and "set-cookie" not in r.headers, path
    assert anonymous.get("/?token=wrong").status_code == 401
    assert anonymous.post("/approvals/X/approve", data={"csrf": "x"}).status_code == 401
    port = console.served.address[1]
    assert anonymous.get("/", headers={"Cookie": f"goex_console_{port}=made-up"}).status_code == 401
    signed = console.client()
    session = signed.cookies[f"goex_console_{port}"]
    assert anonymous.get("/", headers={"Cookie": f"goex_console_{port + 1}={session}"}).status_code == 401
    assert anonymous.get("/", headers={"Cookie": f"goex_console_{port}={session}"}).status_code == 200


def test_the_token_is_traded_for_a_strict_httponly_cookie_and_a_url_without_it(console: Running) -> None:
    client = httpx.Client(base_url=console.base)
    token = console.token()
    r = client.get(f"/approvals?token={token}&x=1")
    assert r.status_code == 303 and r.headers["location"] == "/approvals?x=1"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and token.lower() not in cookie
    page = client.get("/")
    assert page.status_code == 200 and "Requests" in page.text
    assert page.headers["referrer-policy"] == "same-origin" and page.headers["cache-control"] == "no-store"
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "<script src=\"/static/console.js\"" in page.text and "http" not in re.sub(r"https?://slack\.com\S*", "",
                                                                                      page.text.split("<body>")[0])
    js = client.get("/static/console.js")
    assert js.status_code == 200 and "EventSource" in js.text and js.headers["content-type"].startswith("text/java")
    assert client.get("/static/../auth.py").status_code == 404
    assert 'data-refresh="5"' in client.get("/approvals").text and "data-refresh" not in page.text


def test_a_host_other_than_the_consoles_own_is_refused(console: Running) -> None:
    client = console.client()
    port = console.served.address[1]
    assert client.get("/", headers={"Host": f"localhost:{port}"}).status_code == 200
    for host in (f"attacker.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}"):
        assert client.get("/", headers={"Host": host}).status_code == 400, host
    fresh = httpx.Client(base_url=console.base)
    r = fresh.get(f"/?token={console.token()}", headers={"Host": f"rebound.example:{port}"})
    assert r.status_code == 400 and "set-cookie" not in r.headers


def test_a_post_needs_the_sessions_csrf_token_and_the_consoles_origin(console: Running, state: Config) -> None:
    [rid] = fill(state, [{}])
    client = console.client()
    page = client.get("/approvals")
    csrf = console.served.console.keys.csrf(client.cookies[f"goex_console_{console.served.address[1]}"])
    assert f'value="{csrf}"' not in page.text or csrf  # forms carry it when there is something to decide
    assert client.post("/review/seen", data={"id": rid}).status_code == 403
    assert client.post("/review/seen", data={"id": rid, "csrf": "0" * 64}).status_code == 403
    other = console.client()  # another session's token is not this one's
    assert other.post("/review/seen", data={"id": rid, "csrf": csrf}).status_code == 403
    assert client.post("/review/seen", data={"id": rid, "csrf": csrf},
                       headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/review/seen", data={"id": rid, "csrf": csrf},
                       headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.post(f"/request/{rid}/undo", data={}).status_code == 403
    ok = client.post("/review/seen", data={"id": rid, "csrf": csrf}, headers={"Origin": console.base,
                                                                              "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 303 and ok.headers["location"] == "/approvals"


def test_a_damaged_row_is_shown_broken_not_a_page_that_says_try_again(console: Running, state: Config) -> None:
    """A blob that cannot be read (a hand-edited or damaged log) made the log page, its stream and the row's page a
    503 "try again" for as long as the damage lasted. The list shows the row, and the row's page shows the value as
    unreadable, says its chain is broken and offers no undo."""
    fine, damaged = fill(state, [{"rule": "p/fine", "reason": "fine"}, {"rule": "p/damaged", "reason": "damaged"}])
    with sqlite3.connect(state.audit_db) as conn:
        (blob,) = conn.execute("SELECT rule_blob FROM requests WHERE id = ?", (packed(damaged),)).fetchone()
        conn.execute("DELETE FROM audit_blobs WHERE id = ?", (blob,))
    client = console.client()
    listed = client.get("/")
    assert listed.status_code == 200 and fine in listed.text and damaged in listed.text
    page = client.get(f"/request/{damaged}")
    assert page.status_code == 200 and "unreadable rule" in page.text
    assert "broken" in page.text and "No undo plan" in page.text and "cannot be read" in page.text
    assert client.get(f"/request/{fine}").status_code == 200


@pytest.mark.parametrize("column", ["req_body_blob", "req_headers_blob"])
def test_a_row_whose_body_or_headers_cannot_be_read_is_shown_broken(console: Running, state: Config,
                                                                      column: str) -> None:
    """A lenient read gives an unreadable body as text (`<unreadable req_body: ...>`), where the page takes bytes:
    the damaged row's page was an internal error (500) instead of the row with its damage named."""
    [damaged] = fill(state, [{"req_body": b'{"text": "hello"}',
                              "req_headers": '[["Content-Type", "application/json"]]'}])
    with sqlite3.connect(state.audit_db) as conn:
        (blob,) = conn.execute(f"SELECT {column} FROM requests WHERE id = ?", (packed(damaged),)).fetchone()
        conn.execute("DELETE FROM audit_blobs WHERE id = ?", (blob,))
    client = console.client()
    assert client.get("/").status_code == 200 and damaged in client.get("/").text
    page = client.get(f"/request/{damaged}")
    assert page.status_code == 200 and "broken" in page.text and "No undo plan" in page.text
    field = column.removesuffix("_blob")
    assert f"the {field} of row {damaged} cannot be read" in page.text and "<unreadable" not in page.text
    if field == "req_body":
        assert f"&lt;unreadable {field}:" in page.text


@pytest.mark.parametrize(("column", "value", "shown"), [
    ("ended", None, "&lt;unreadable duration_ms: no start and end&gt;"),
    ("duration_ms", "slow", ", slow"),
    ("ts", "yesterday", "(not a time)"),
    ("ts", 1e300, "(not a time)"),
])
def test_a_time_or_duration_that_is_no_number_is_shown_as_such(console: Running, state: Config, column: str,
                                                                value: object, shown: str) -> None:
    """A row's duration is left to its start and end when it is their difference: with its end edited away it reads
    as unreadable text, which the row's page formatted as a number (500). A ts edited to text or past the year 9999
    took the log page and the row's page down with a 500 (the stream's rows are the page's; `log` shows it as not a
    time)."""
    ids, writer = RequestIds(), AuditWriter(state.audit_db, Seal(state.state_dir))
    made = []
    for i in range(2):
        rid, ts = ids.new(1_700_000_000 + i), 1_700_000_000.0 + i
        writer.record_intent({"id": rid, "ts": ts, "agent": "bot", "method": "GET", "scheme": "https",
                              "host": "slack.com", "port": 443, "path": "/p", "url": "https://slack.com/p",
                              "req_headers": "[]", "req_body": b"", "decision": "allow"}).result(5)
        writer.record_outcome(rid, {"status": 200, "ended": ts + 0.25, "duration_ms": 250.0,
                                    "resp_headers": "[]"}).result(5)
        made.append(rid)
    writer.close()
    fine, edited = made
    with sqlite3.connect(state.audit_db) as conn:
        assert conn.execute("SELECT duration_ms FROM requests WHERE id = ?", (packed(fine),)).fetchone() == (b"",)
        conn.execute(f"UPDATE requests SET {column} = ? WHERE id = ?", (value, packed(edited)))
    client = console.client()
    assert "250 ms" in client.get(f"/request/{fine}").text
    listed = client.get("/")
    assert listed.status_code == 200 and fine in listed.text and edited in listed.text
    page = client.get(f"/request/{edited}")
    assert page.status_code == 200 and shown in page.text and "broken" in page.text


@pytest.mark.parametrize(("column", "value"), [
    ("port", -5), ("pre_headers", "x"), ("pre_headers", b"\x07"), ("req_body_size", "x"), ("resp_body_size", b"\x01\x02"),
    ("undo_of", b"\x01\x02"),
])
def test_an_edited_rows_page_says_it_is_broken_and_plans_nothing(console: Running, state: Config, column: str,
                                                                  value: object) -> None:
    """The row's page planned an undo from an edited row (whose values may be of any shape: a port urlsplit refuses,
    pre-image headers that are no JSON list) and formatted its sizes and undo_of as the writer writes them: each such
    edit answered 500 where the page was to say the row does not hold. An edited row is planned on by nothing (undo
    refuses it)."""
    [rid] = fill(state, [{"req_body": b"x"}])
    with sqlite3.connect(state.audit_db) as conn:
        if column == "pre_headers":  # a new log keeps them in a blob only
            blob = conn.execute("INSERT INTO audit_blobs (data, refs) VALUES (?, 1)", (blobs.encode(value),)).lastrowid
            column, value = "pre_headers_blob", blob
        conn.execute(f"UPDATE requests SET {column} = ? WHERE id = ?", (value, packed(rid)))
    page = console.client().get(f"/request/{rid}")
    assert page.status_code == 200 and "broken" in page.text and "No undo plan: its audit row does not hold" in \
        page.text, page.text[-400:]


def test_recorded_values_are_shown_as_text(console: Running, state: Config) -> None:
    [rid] = fill(state, [{"agent": "bot", "url": f"https://slack.com/p?q={SCRIPT}",
                          "req_headers": f'[["X-Evil", "{SCRIPT}"], ["Content-Type", "text/html"]]',
                          "req_body": f"<b>{SCRIPT}</b>".encode(), "reason": SCRIPT}])
    client = console.client()
    for path in ("/", f"/request/{rid}"):
        text = client.get(path).text
        assert SCRIPT not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path
    assert "<script" not in client.get(f"/request/{rid}").text.replace('<script src="/static/console.js" defer>', "")


def test_the_log_is_paged_by_keyset_newest_first_and_filtered(console: Running, state: Config) -> None:
    ids = fill(state, [{"agent": "a" if i % 2 else "b", "host": "h.example"} for i in range(120)])
    client = console.client()
    first = client.get("/").text
    shown = re.findall(r'href="/request/([0-9A-Z]+)"', first)
    assert shown == list(reversed(ids))[:50]
    older = re.search(r'href="(/\?before=\d+&amp;at=[0-9.e+]+)" rel="next"', first)
    assert older, "a link to older rows"
    second = re.findall(r'href="/request/([0-9A-Z]+)"', client.get(older.group(1).replace("&amp;", "&")).text)
    assert second == list(reversed(ids))[50:100]
    only_a = re.findall(r'href="/request/([0-9A-Z]+)"', client.get("/?agent=a").text)
    assert only_a == [i for i in reversed(ids) if ids.index(i) % 2][:50]
    assert client.get("/?decision=bogus").status_code == 400 and client.get("/?before=x").status_code == 400
    assert client.get("/?before=5&at=nan").status_code == 400 and client.get("/?before=5&at=x").status_code == 400
    assert client.get("/?since=yesterday-ish").status_code == 400
    window = re.findall(r'href="/request/([0-9A-Z]+)"', client.get("/", params={
        "since": "2023-11-14T22:13:25+00:00", "until": "2023-11-14T22:13:29+00:00", "agent": "a"}).text)
    assert window == [i for i in reversed(ids) if 5 <= ids.index(i) <= 9 and ids.index(i) % 2], "a time window"


def test_new_rows_arrive_on_the_event_stream(console: Running, state: Config) -> None:
    fill(state, [{}])
    client = console.client()
    page = client.get("/").text
    stream = re.search(r'data-stream="([^"]+)"', page).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    got: list[str] = []

    def listen() -> None:
        with client.stream("GET", stream, timeout=15) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    got.append(line)
                    return

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    [new] = fill(state, [{"agent": "late", "url": f"https://slack.com/{SCRIPT}"}])
    reader.join(15)
    assert got and new in got[0] and SCRIPT not in got[0] and "&lt;script&gt;" in got[0]


def test_a_row_shows_its_chain_status_and_an_edited_row_is_named_broken(console: Running, state: Config) -> None:
    ids = fill(state, [{}, {}])
    client = console.client()
    assert "intact" in client.get(f"/request/{ids[1]}").text
    with sqlite3.connect(state.audit_db) as conn:
        conn.execute("UPDATE requests SET status = 201 WHERE id = ?", (packed(ids[1]),))
    page = client.get(f"/request/{ids[1]}").text
    assert "broken: its outcome fields do not match" in page
    assert client.get("/request/NOPE").status_code == 404


def test_a_taken_port_and_an_open_address_are_one_clear_error(state: Config, console: Running) -> None:
    async def serve(listen: tuple[str, int]) -> None:
        await serve_console(state, listen)

    with pytest.raises(StateError, match="cannot serve the console on 127.0.0.1:"):
        asyncio.run(serve(console.served.address))
    with pytest.raises(StateError, match="not a loopback address"):
        asyncio.run(serve(("0.0.0.0", 0)))


def test_no_agent_request_reaches_the_console_whatever_else_egress_allows(tmp_path: Path) -> None:
    import ipaddress

    config = load_config(write_config(tmp_path, "upstream: {block_private_networks: false}\n"
                                                "console: {listen: '127.0.0.1:8791'}\n"))
    loopback = ipaddress.ip_address("127.0.0.1")
    assert "web console, which no agent may reach" in str(config.egress.refusal("localhost", 8791, [loopback]))
    assert config.egress.refusal("localhost", 8792, [loopback]) is None
    without = load_config(write_config(tmp_path, "upstream: {block_private_networks: false}\n"))
    assert without.egress.refusal("localhost", 8791, [loopback]) is None


def test_a_console_with_tls_is_served_over_https_with_a_secure_cookie(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = load_config(write_config(tmp_path, "console: {listen: '127.0.0.1:8791', tls_cert: cert.pem, "
                                                "tls_key: key.pem}\n"))
    running = Running(config)
    try:
        assert running.base.startswith("https://127.0.0.1:")
        with pytest.raises(httpx.HTTPError):
            httpx.get(running.base.replace("https", "http") + "/", timeout=5)
        client = httpx.Client(base_url=running.base, verify=ssl.create_default_context(cafile=tmp_path / "ca.pem"),
                              timeout=10)
        r = client.get(f"/?token={running.token()}")
        cookie = r.headers["set-cookie"].lower()
        assert r.status_code == 303 and "secure" in cookie and cookie.startswith(f"__host-goex_console_{running.served.address[1]}=")
        assert client.get("/").status_code == 200
    finally:
        running.close()


def test_signing_in_never_redirects_off_the_console(console: Running) -> None:
    client = httpx.Client(base_url=console.base)
    for path in ("//evil.example/", "/%2F%2Fevil.example", "/\\evil.example"):
        r = client.get(f"{path}?token={console.token()}")
        location = r.headers.get("location", "")
        assert r.status_code in (303, 401) and not location.startswith(("//", "/\\")), (path, location)


def test_a_cookie_of_the_same_name_from_another_local_server_does_not_sign_the_person_out(console: Running) -> None:
    port = console.served.address[1]
    signed = httpx.Client(base_url=console.base)
    signed.get(f"/?token={console.token()}")
    session = signed.cookies[f"goex_console_{port}"]
    anonymous = httpx.Client(base_url=console.base)
    both = f"goex_console_{port}=planted; goex_console_{port}={session}"
    assert anonymous.get("/approvals", headers={"Cookie": both}).status_code == 200
    assert anonymous.get("/approvals", headers={"Cookie": f"goex_console_{port}=planted"}).status_code == 401


def test_an_answer_the_agent_did_not_get_shows_error_in_the_list_and_both_on_its_page(console: Running,
                                                                                      state: Config) -> None:
    """A row that keeps the upstream's status with why the agent did not get the answer (mitmproxy refused it, scrub
    withheld it) reads `error` in the list, as `goex-proxy log` has it, and its page shows the status and the error."""
    [ok] = fill(state, [{}])
    rid, writer = RequestIds().new(1_700_000_100), AuditWriter(state.audit_db, Seal(state.state_dir))
    writer.record_intent({"id": rid, "ts": 1_700_000_100.0, "agent": "bot", "method": "PUT", "scheme": "https",
                          "host": "slack.com", "port": 443, "path": "/x", "url": "https://slack.com/x",
                          "req_headers": "[]", "req_body": b"", "decision": "allow"}).result(5)
    writer.record_outcome(rid, {"status": 201, "ended": 1_700_000_101.0, "duration_ms": 1000.0, "resp_headers": "[]",
                                "error": "the agent did not get this answer whole: peer closed"}).result(5)
    writer.close()
    client = console.client()
    cells = {found: re.search(rf'/request/{found}".*?</tr>', client.get("/").text, re.S) for found in (ok, rid)}
    assert cells[rid] and ">error</td>" in cells[rid].group() and ">201</td>" not in cells[rid].group()
    assert cells[ok] and ">200</td>" in cells[ok].group()
    page = client.get(f"/request/{rid}").text
    assert "Status: <b>201</b>" in page and "the agent did not get this answer whole" in page
