"""An agent against the audit log's storage layout: it holds only its token, chooses every byte of its requests and,
through an upstream it controls on 127.0.0.1, every byte of the answers. Whatever it sends must read back as sent,
verify, and be found by every filter that should find it."""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator

import pytest

from goex_proxy.addons.httpbounds import MAX_INTERIM
from goex_proxy.audit import store as audit
from goex_proxy.console import data as console_data
from tests.conftest import TOKENS, GoexProxy, LoopbackServer, read_head

pytestmark = pytest.mark.e2e

HOST = "notes.example"
POLICY = {"notes": f"""
    version: 1
    rules:
      - name: the notes API
        allow: {{host: {HOST}, methods: [GET, POST, PUT, DELETE]}}
"""}
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def _answer(answers: dict[str, bytes]) -> Callable[[socket.socket], None]:
    """An upstream that reads a request head and sends back the bytes its path names (OK for any other)."""
    def serve(conn: socket.socket) -> None:
        conn.settimeout(10)
        data = read_head(conn)
        if b"\r\n\r\n" not in data:
            return
        path = data.split(b" ", 2)[1].split(b"?")[0].decode("latin-1")
        conn.sendall(answers.get(path, OK))
    return serve


@pytest.fixture
def answers() -> dict[str, bytes]:
    return {}


@pytest.fixture
def upstream_server(answers: dict[str, bytes]) -> Iterator[LoopbackServer]:
    server = LoopbackServer(_answer(answers))
    yield server
    server.close()


@pytest.fixture
def proxy(make_proxy, upstream_server: LoopbackServer) -> GoexProxy:
    return make_proxy(POLICY, routes={HOST: f"http://127.0.0.1:{upstream_server.port}"})


def send(proxy: GoexProxy, head: list[str], agent: str = "mailbot", body: bytes | None = None) -> bytes:
    """One request as the agent writes it, byte for byte (its proxy credentials added after the request line, its
    body's length after its headers); the whole answer."""
    creds = base64.b64encode(f"{agent}:{TOKENS[agent]}".encode()).decode()
    sized = [f"Content-Length: {len(body)}"] if body is not None else []
    lines = [head[0], f"Proxy-Authorization: Basic {creds}", *head[1:], *sized, "Connection: close"]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + (body or b""))
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def logged(proxy: GoexProxy, *options: str) -> list[dict[str, object]]:
    result = proxy.cli("log", "--json", "--limit", "1000", *options)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_host_spelled_in_upper_case_or_with_a_trailing_dot_is_found_by_the_host_filters(proxy: GoexProxy) -> None:
    """The policy, routes and credentials read `NOTES.example.` as notes.example, and the row keeps the host as the
    request spelled it; `log --host notes.example` and the console's host filter compared it byte for byte, so an
    agent kept its requests out of them by spelling the host so."""
    spellings = [HOST, HOST.upper(), f"{HOST}.", "Notes.Example."]
    for n, host in enumerate(spellings):
        assert send(proxy, [f"GET http://{host}/posts/{n} HTTP/1.1", f"Host: {host}"]).startswith(b"HTTP/1.1 200")
    rows = logged(proxy)
    assert sorted(r["host"] for r in rows) == sorted(spellings)  # as sent
    for asked in (HOST, HOST.upper(), f"{HOST}."):
        assert sorted(r["host"] for r in logged(proxy, "--host", asked)) == sorted(spellings), asked
    assert logged(proxy, "--host", "otes.example") == []
    conn = audit.open_db(proxy.home / "audit.db", readonly=True)
    try:
        for asked in (HOST, "NOTES.EXAMPLE"):
            page = console_data.page(conn, console_data.Filters(host=asked))
            assert sorted(r["host"] for r in page) == sorted(spellings)
            assert sorted(r["host"] for r in console_data.newer(conn, console_data.Filters(host=asked), 0)[0]) == \
                sorted(spellings)
    finally:
        conn.close()
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("ok: 4 rows"), verified.stdout + verified.stderr


def test_a_prune_gives_back_the_names_only_pruned_rows_held(proxy: GoexProxy) -> None:
    """Each host an agent names, allowed or not, is a name in `audit_names`; a prune removed the rows and kept every
    name for good, so requests to ever new hosts grew the log in a way no prune gave back. A prune now removes the
    names no kept row holds, and the running proxy, which remembered their ids, names them again when an agent
    sends to them later: `log verify` holds throughout."""
    for n in range(30):
        assert send(proxy, [f"GET http://h{n}.elsewhere.example/x HTTP/1.1", f"Host: h{n}.elsewhere.example"]
                    ).startswith(b"HTTP/1.1 403")
    time.sleep(1.1)
    assert send(proxy, [f"GET http://{HOST}/posts HTTP/1.1", f"Host: {HOST}"]).startswith(b"HTTP/1.1 200")
    names = {n for (n,) in sqlite3.connect(proxy.home / "audit.db").execute("SELECT name FROM audit_names")}
    assert {f"h{n}.elsewhere.example" for n in range(30)} <= names
    pruned = proxy.cli("log", "prune", "--older-than", "1s")
    assert pruned.returncode == 0 and pruned.stdout.startswith("pruned 30 rows"), pruned.stdout + pruned.stderr
    with sqlite3.connect(proxy.home / "audit.db") as conn:
        assert {n for (n,) in conn.execute("SELECT name FROM audit_names")} == {"mailbot", HOST}
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("ok: 1 rows"), verified.stdout + verified.stderr
    for n in (3, 29):  # the proxy remembered these names' ids; they are gone, or another name's
        assert send(proxy, [f"GET http://h{n}.elsewhere.example/x HTTP/1.1", f"Host: h{n}.elsewhere.example"]
                    ).startswith(b"HTTP/1.1 403")
    assert send(proxy, ["GET http://new.elsewhere.example/x HTTP/1.1", "Host: new.elsewhere.example"]
                ).startswith(b"HTTP/1.1 403")
    assert [r["host"] for r in logged(proxy)] == [HOST, "h3.elsewhere.example", "h29.elsewhere.example",
                                                   "new.elsewhere.example"]
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("ok: 4 rows"), verified.stdout + verified.stderr


def _json_answer(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + body)


def _until(check: Callable[[], object], what: str, timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def test_an_answer_with_a_lone_surrogate_in_its_json_still_gets_its_outcome(proxy: GoexProxy,
                                                                           answers: dict[str, bytes]) -> None:
    """JSON may escape a lone surrogate (`"\\udc80"`), which Python reads as such and the CEL engine cannot take:
    working out the undo class of a DELETE answered so raised, the outcome was never recorded, and the row read as
    still in flight (then `interrupted`) while the agent had its 200, with no undo class for session undo to act on."""
    answers["/posts/3"] = _json_answer(b'{"id": 3, "title": "\\udc80 and a pair \\ud83d\\ude00"}')
    assert send(proxy, [f"DELETE http://{HOST}/posts/3 HTTP/1.1", f"Host: {HOST}"]).startswith(b"HTTP/1.1 200")
    row = _until(lambda: next((r for r in logged(proxy) if r["method"] == "DELETE" and r["status"] is not None), None),
                 "the DELETE's outcome")
    assert isinstance(row, dict) and (row["status"], row["error"]) == (200, None)
    assert row["undo_class"] not in (None, "no rule", "not effective"), row
    shown = json.loads(proxy.cli("show", "--json", str(row["id"])).stdout.splitlines()[0])
    assert '"\\udc80 and a pair' in shown["resp_body"]
    planned = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--dry-run")
    assert planned.returncode == 0 and str(row["id"]) in planned.stdout, planned.stdout + planned.stderr
    assert "Addon error" not in proxy.log_text()
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_create_answered_with_a_location_no_url_parser_takes_still_gets_its_outcome(
        proxy: GoexProxy, answers: dict[str, bytes]) -> None:
    """The REST pack undoes a create at the Location its answer names; `Location: http://[x` made the URL parser
    raise (ValueError "Invalid IPv6 URL") while the undo class was worked out, so the outcome was never recorded (the
    row in flight, then `interrupted`, while the agent had its 201), and planning its undo ended in an internal
    error. Such a Location is no URL on the request's origin: nothing is planned from it."""
    body = b'{"id": 9, "title": "made"}'
    answers["/posts"] = (b"HTTP/1.1 201 Created\r\nLocation: http://[x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    assert send(proxy, [f"POST http://{HOST}/posts HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json"],
                body=b"{}").startswith(b"HTTP/1.1 201")
    row = _until(lambda: next((r for r in logged(proxy) if r["method"] == "POST" and r["status"] is not None), None),
                 "the POST's outcome")
    assert isinstance(row, dict) and (row["status"], row["error"]) == (201, None), row
    planned = proxy.cli("undo", str(row["id"]), "--dry-run")
    assert planned.returncode not in (0, 70) and "origin" in planned.stdout + planned.stderr, \
        planned.stdout + planned.stderr
    session = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--dry-run")
    assert session.returncode != 70 and "internal error" not in session.stderr, session.stdout + session.stderr
    assert "Addon error" not in proxy.log_text()
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


#: An operator's undo pack whose compensation body cannot be made for some requests: its `json:` takes the request's
#: body, which is bytes, and JSON has no bytes (TypeError while the undo is worked out).
BYTES_IN_JSON_PACK = f"""
version: 1
name: notes
rules:
  - name: post a note
    match: {{hosts: [{HOST}], methods: [POST]}}
    class: exact
    undo:
      - method: POST
        url: "${{request.url}}"
        json: {{note: "${{request.body}}"}}
        why: posts the note again
"""


def test_a_request_whose_undo_rule_raises_still_gets_its_outcome(make_proxy, upstream_server: LoopbackServer,
                                                                 tmp_path) -> None:
    """An undo rule whose `json:` body takes bytes raised TypeError while the undo class was worked out: the outcome
    was never recorded (the row in flight, then `interrupted`, while the agent had its 200), and planning its undo
    ended in an internal error. The body that cannot be made is the plan's reason."""
    pack = tmp_path / "notes-undo.yaml"
    pack.write_text(BYTES_IN_JSON_PACK)
    proxy = make_proxy(POLICY, routes={HOST: f"http://127.0.0.1:{upstream_server.port}"},
                       extra_config=f"undo_rules: [{pack}]\n")
    assert send(proxy, [f"POST http://{HOST}/notes HTTP/1.1", f"Host: {HOST}"], body=b"hello").startswith(b"HTTP/1.1 200")
    row = _until(lambda: next((r for r in logged(proxy) if r["status"] is not None), None), "the POST's outcome")
    assert isinstance(row, dict) and (row["status"], row["error"]) == (200, None), row
    assert row["undo_class"] == "exact", row
    for args in (("undo", str(row["id"]), "--dry-run"), ("undo", "--agent", "mailbot", "--since", "1h", "--dry-run")):
        planned = proxy.cli(*args)
        assert planned.returncode != 70 and "its JSON body cannot be made" in planned.stdout + planned.stderr, \
            planned.stdout + planned.stderr
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_write_whose_url_holds_a_character_beyond_ascii_is_sent(proxy: GoexProxy) -> None:
    """A PUT to `/posts/1?q=é` (the UTF-8 bytes as sent) was refused with 502 "internal error in the preimage stage":
    the pre-image read's request could not be made of that URL (UnicodeEncodeError), outside what counted as the
    read failing. A read that cannot be made is one that failed: the request goes on, and undo says why it has no
    pre-image."""
    answer = send(proxy, [f"PUT http://{HOST}/posts/1?q=\u00e9t\u00e9 HTTP/1.1", f"Host: {HOST}",
                          "Content-Type: application/json"], body=b"{}")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    row = _until(lambda: next((r for r in logged(proxy) if r["method"] == "PUT" and r["status"] is not None), None),
                 "the PUT's outcome")
    assert isinstance(row, dict) and (row["status"], row["error"]) == (200, None), row
    assert "internal error" not in proxy.log_text()
    planned = proxy.cli("undo", str(row["id"]), "--dry-run")
    assert planned.returncode not in (0, 70) and "pre-image" in planned.stdout + planned.stderr, \
        planned.stdout + planned.stderr


SECRET = "notes-SECRET-4c1d9e"
#: A credential bound elsewhere: its secret is scrubbed from every answer, so an answer that cannot be checked for it
#: is withheld.
VAULT = """credentials:
  vault:
    secret: vault-key
    hosts: [vault.example]
    inject: {header: X-Api-Key, value: "{secret}"}
"""
#: Answers the agent does not get: refused by mitmproxy (framing that could smuggle, a header name beyond ASCII, here
#: quoting the secret), broken off, or withheld by goex-proxy (a body that does not decode cannot be checked).
NOT_PASSED_ON = {
    "/framing": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                 200, "the agent did not get this answer whole: Received message with both transfer-encoding and "
                      "content-length headers"),
    "/name": (b"HTTP/1.1 200 OK\r\nX-\xc3\xa9" + SECRET.encode() + b": 1\r\nContent-Length: 2\r\n\r\nok",
              200, "the agent did not get this answer whole: Received invalid header name"),
    "/cut": (b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\nhello", 201,
             "the agent did not get this answer whole: "),
    "/gzip": (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello", 200,
              "withheld from the agent (a 502 instead): it cannot be checked for secrets, as its content encoding "
              "cannot be undone"),
}


def test_an_answer_the_agent_did_not_get_is_recorded_so(make_proxy, upstream_server: LoopbackServer,
                                                        answers: dict[str, bytes]) -> None:
    """mitmproxy refuses an answer whose framing could smuggle or whose header name is beyond ASCII, and one that
    breaks off; goex-proxy withholds one it cannot check for secrets. The agent got a 502 each time, and its row said
    `allow 200` as if the agent had the answer. The row keeps the upstream's status (what happened there, which undo
    reads) with why the agent did not get it, `log` shows `error`, and the secret an answer quoted is in no row (a
    header's name was recorded unscrubbed, with the secret the upstream echoed into it)."""
    proxy = make_proxy(POLICY, start=False, routes={HOST: f"http://127.0.0.1:{upstream_server.port}"},
                       extra_config=VAULT)
    stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "vault-key", input=SECRET.encode())
    assert stored.returncode == 0, stored.stderr
    proxy.start()
    answers.update({path: answer for path, (answer, _, _) in NOT_PASSED_ON.items()})
    answers["/named"] = b"HTTP/1.1 200 OK\r\nX-" + SECRET.encode() + b": 1\r\nContent-Length: 2\r\n\r\nok"
    for path in [*NOT_PASSED_ON, "/ok", "/named"]:
        got = send(proxy, [f"PUT http://{HOST}{path} HTTP/1.1", f"Host: {HOST}"], body=b"x")
        assert got.startswith(b"HTTP/1.1 502" if path in NOT_PASSED_ON else b"HTTP/1.1 200"), (path, got[:300])
        assert SECRET.encode() not in got, path
    rows = _until(lambda: (found := logged(proxy)) and all(r["status"] or r["error"] for r in found)
                  and len(found) == 6 and found, "every outcome")
    assert isinstance(rows, list)
    by_path = {r["path"]: r for r in rows}
    for path, (_, status, error) in NOT_PASSED_ON.items():
        assert by_path[path]["status"] == status and str(by_path[path]["error"]).startswith(error), by_path[path]
    assert (by_path["/ok"]["status"], by_path["/ok"]["error"]) == (200, None)
    assert (by_path["/named"]["status"], by_path["/named"]["error"]) == (200, None)
    table = proxy.cli("log").stdout
    assert [line.split()[5] for line in table.splitlines() if HOST in line] == ["error"] * 4 + ["200"] * 2, table
    shown = proxy.cli("show", str(by_path["/cut"]["id"])).stdout
    assert "error: the agent did not get this answer whole" in shown and "as it came:" in shown and "201" in shown
    every = json.dumps(proxy.rows(), default=str) + proxy.log_text() + table
    assert SECRET not in every and "goex-placeholder-vault" in str(by_path["/name"]["error"])
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_secret_an_error_of_mitmproxy_quotes_is_in_no_row_page_or_log(make_proxy, upstream_server: LoopbackServer,
                                                                     answers: dict[str, bytes]) -> None:
    """mitmproxy refuses an answer whose Transfer-Encoding or Content-Length it cannot read, quoting the value as
    Python quotes text: a secret with both kinds of quote in it, echoed there, came back with its `'` escaped, which no
    spelling the scrubber knew matched, so the agent's 502 page, the row's error and the log had it a backslash away
    from its own spelling."""
    secret = "notes-'SEC\"RET-4c1d9e"
    proxy = make_proxy(POLICY, start=False, routes={HOST: f"http://127.0.0.1:{upstream_server.port}"},
                       extra_config=VAULT)
    stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "vault-key", input=secret.encode())
    assert stored.returncode == 0, stored.stderr
    proxy.start()
    answers["/te"] = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: " + secret.encode()
                      + b"\r\n\r\n0\r\n\r\n")
    answers["/cl"] = b"HTTP/1.1 200 OK\r\nContent-Length: " + secret.encode() + b"\r\n\r\nok"
    for path in ("/te", "/cl"):
        got = send(proxy, [f"PUT http://{HOST}{path} HTTP/1.1", f"Host: {HOST}"], body=b"x")
        assert got.startswith(b"HTTP/1.1 502") and b"SEC&quot;RET" not in got and b"goex-placeholder-vault" in got, \
            got
    rows = _until(lambda: (found := logged(proxy)) and len(found) == 2 and all(r["error"] for r in found) and found,
                  "both outcomes")
    assert all("goex-placeholder-vault" in str(r["error"]) for r in rows), rows
    every = json.dumps(proxy.rows(), default=str) + proxy.log_text() + proxy.cli("log").stdout
    assert 'SEC"RET' not in every and "SEC\\\\\"RET" not in every, every


def test_an_answer_a_stage_replaced_keeps_the_upstreams_status_in_its_row(proxy: GoexProxy,
                                                                         answers: dict[str, bytes]) -> None:
    """decide refuses an answer whose fields could be re-read as others, and answers 502 in its place: the row held
    goex-proxy's 502 as if the upstream had failed, and no undo class, while the upstream had made the write (201).
    The row keeps the upstream's answer, with why the agent did not get it, as for an answer scrub withholds; one
    whose status is no HTTP status keeps goex-proxy's 502, and says it stood in for an upstream answer (it read as
    goex-proxy's own refusal: the request had gone upstream)."""
    answers["/nul"] = b"HTTP/1.1 201 Created\r\nX-A: a\x00b\r\nContent-Length: 7\r\n\r\ncreated"
    answers["/digits"] = b"HTTP/1.1 20000000000000000000 OK\r\nContent-Length: 2\r\n\r\nok"
    for path in ("/nul", "/digits"):
        got = send(proxy, [f"PUT http://{HOST}{path} HTTP/1.1", f"Host: {HOST}"], body=b"x")
        assert got.startswith(b"HTTP/1.1 502") and b"malformed" in got, got
    rows = _until(lambda: (found := logged(proxy)) and len(found) == 2 and all(r["status"] for r in found) and found,
                  "both outcomes")
    assert isinstance(rows, list)
    by_path = {r["path"]: r for r in rows}
    assert by_path["/nul"]["status"] == 201 and str(by_path["/nul"]["error"]).startswith(
        "the agent got goex-proxy's 502 instead of this answer: the upstream's answer is malformed"), by_path["/nul"]
    assert by_path["/nul"]["undo_class"] not in (None, "-"), by_path["/nul"]
    assert by_path["/digits"]["status"] == 502 and by_path["/digits"]["error"] == (
        "the agent got goex-proxy's 502 instead of the upstream answer: the upstream's answer is malformed; it was "
        "not relayed: its status code is not three digits"), by_path["/digits"]
    shown = proxy.cli("show", str(by_path["/nul"]["id"])).stdout
    assert "as it came:" in shown and "201" in shown and "created" in shown, shown
    planned = proxy.cli("undo", str(by_path["/nul"]["id"]), "--dry-run")
    assert planned.returncode not in (0, 70) and "pre-image" in planned.stdout + planned.stderr, \
        planned.stdout + planned.stderr  # planned from the write that happened, as the rule needs
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_answer_with_no_body_in_a_coding_that_cannot_be_empty_reaches_the_agent(make_proxy,
                                                                                   upstream_server: LoopbackServer,
                                                                                   answers: dict[str, bytes]) -> None:
    """A 304 (or a HEAD's answer, or a 204) names the Content-Encoding of a body it does not send; brotli cannot
    decode no bytes at all, so scrub withheld every such answer in br as impossible to check (a 502, and since the
    previous commit a row saying so), while there was nothing in it to check."""
    proxy = make_proxy(POLICY, start=False, routes={HOST: f"http://127.0.0.1:{upstream_server.port}"},
                       extra_config=VAULT)
    stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "vault-key", input=SECRET.encode())
    assert stored.returncode == 0, stored.stderr
    proxy.start()
    answers["/304"] = b"HTTP/1.1 304 Not Modified\r\nContent-Encoding: br\r\nETag: \"1\"\r\n\r\n"
    answers["/204"] = b"HTTP/1.1 204 No Content\r\nContent-Encoding: br\r\n\r\n"
    for path, status in (("/304", b"304"), ("/204", b"204")):
        got = send(proxy, [f"GET http://{HOST}{path} HTTP/1.1", f"Host: {HOST}"])
        assert got.startswith(b"HTTP/1.1 " + status), got
    rows = _until(lambda: (found := logged(proxy)) and len(found) == 2 and all(r["status"] for r in found) and found,
                  "both outcomes")
    assert sorted((r["status"], r["error"]) for r in rows) == [(204, None), (304, None)], rows


def test_a_secret_split_between_a_header_name_and_its_value_is_in_no_row(make_proxy, upstream_server: LoopbackServer,
                                                                        answers: dict[str, bytes]) -> None:
    """An upstream echoing a secret across a header's name and value: the agent's answer is scrubbed as one stream,
    but the row scrubbed the name and the value each alone, and kept the secret in two pieces."""
    proxy = make_proxy(POLICY, start=False, routes={HOST: f"http://127.0.0.1:{upstream_server.port}"},
                       extra_config=VAULT)
    stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "vault-key", input=SECRET.encode())
    assert stored.returncode == 0, stored.stderr
    proxy.start()
    answers["/split"] = b"HTTP/1.1 200 OK\r\nX-" + SECRET[:10].encode() + b": " + SECRET[10:].encode() + \
        b"\r\nContent-Length: 2\r\n\r\nok"
    got = send(proxy, [f"GET http://{HOST}/split HTTP/1.1", f"Host: {HOST}"])
    assert got.startswith(b"HTTP/1.1 200") and SECRET[10:].encode() not in got, got
    rows = _until(lambda: (found := proxy.rows()) and found[-1]["status"] and found, "the outcome")
    assert isinstance(rows, list)
    headers = str(rows[-1]["resp_headers"])
    assert SECRET[10:] not in headers and "goex-placeholder-vault" in headers, headers


def _switching(conn: socket.socket) -> None:
    """An upstream that answers 101 to whatever it is asked, then keeps the connection open as the new protocol."""
    conn.settimeout(5)
    if b"\r\n\r\n" not in read_head(conn):
        return
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n")
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


def test_a_connection_whose_switch_of_protocols_was_refused_ends_with_the_refusal(make_proxy) -> None:
    """decide answers 502 in place of a 101 no rule allows, but mitmproxy has already made the upstream's connection a
    pipe for the new protocol, and handed it to the agent's next request on the same connection: its HTTP layer
    crashed on it (an assertion), the agent waited for an answer that never came, and the row said `Client
    disconnected.` once it gave up, for a request that was never sent. The refusal closes the agent's connection."""
    server = LoopbackServer(_switching)
    try:
        proxy = make_proxy(POLICY, routes={HOST: f"http://127.0.0.1:{server.port}"})
        creds = base64.b64encode(f"mailbot:{TOKENS['mailbot']}".encode()).decode()
        head = "GET http://{host}{path} HTTP/1.1\r\nProxy-Authorization: Basic {creds}\r\nHost: {host}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock:
            sock.sendall(head.format(host=HOST, path="/switch", creds=creds).encode())
            first = b""
            while b"}\n" not in first and (chunk := sock.recv(65536)):
                first += chunk
            assert first.startswith(b"HTTP/1.1 502") and b"switched protocols" in first, first
            rest = b""
            try:
                sock.sendall(head.format(host=HOST, path="/next", creds=creds).encode())
                while chunk := sock.recv(65536):
                    rest += chunk
            except TimeoutError:
                rest += b"(no answer)"
            except OSError:  # reset: closed after the refusal
                pass
        assert rest == b"", rest  # the next request is never read
        assert "crashed" not in proxy.log_text(), proxy.log_text()
        [row] = _until(lambda: (found := logged(proxy)) and found[-1]["status"] and found, "the outcome")
        assert (row["path"], row["status"]) == ("/switch", 101) and "switched protocols" in str(row["error"]), row
        verified = proxy.cli("log", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        server.close()


def test_runs_line_for_an_answer_the_agent_did_not_get_says_so(proxy: GoexProxy, answers: dict[str, bytes]) -> None:
    """An answer that broke off (or that mitmproxy refused) reached the agent as mitmproxy's 502, and its row says
    so since the commits before; `run`'s line for it still read `201 undo: ...` with nothing after, as if the agent
    had it. The line says `failed`, with the upstream's status and why, as `log` shows `error`."""
    answers["/cut"] = NOT_PASSED_ON["/cut"][0]
    got = send(proxy, [f"PUT http://{HOST}/cut HTTP/1.1", f"Host: {HOST}"], body=b"x")
    assert got.startswith(b"HTTP/1.1 502"), got
    row = _until(lambda: (found := logged(proxy)) and found[-1]["error"] and found[-1], "the outcome")
    assert isinstance(row, dict) and row["status"] == 201, row
    line = _until(lambda: next((x for x in proxy.log_text().splitlines() if "PUT http" in x and str(row["id"]) in x), None),
                  "the request's line")
    assert str(line).split()[6] == "failed" and "did not get the upstream's 201 whole: HTTP/1 protocol error" in \
        str(line), line


def test_an_interim_answer_is_passed_over_for_the_final_one(proxy: GoexProxy, answers: dict[str, bytes]) -> None:
    """An upstream may send interim answers (103 Early Hints, 100 Continue) before its final one. mitmproxy took the
    first for the final answer: the agent got a 103 with no body, the row said 103 for a create the upstream went on
    to answer 201, and the 201 was dropped as data for no request. A 101 is still a final answer (a switch)."""
    body = b'{"id": 7}'
    final = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
             + b"\r\nConnection: close\r\n\r\n" + body)
    answers["/posts"] = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + final
    answers["/twice"] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </b.css>\r\n\r\n" + final
    for path in ("/posts", "/twice"):
        got = send(proxy, [f"POST http://{HOST}{path} HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json"],
                   body=b"{}")
        assert got.startswith(b"HTTP/1.1 201") and got.endswith(body) and b"Early Hints" not in got, (path, got)
    rows = _until(lambda: (found := logged(proxy)) and len(found) == 2 and all(r["status"] for r in found) and found,
                  "both outcomes")
    assert isinstance(rows, list) and [(r["status"], r["error"]) for r in rows] == [(201, None), (201, None)], rows
    assert all(r["undo_class"] not in (None, "not effective") for r in rows), rows


def test_an_upstream_sending_interim_answers_without_end_fails_its_request(proxy: GoexProxy,
                                                                            answers: dict[str, bytes]) -> None:
    """Interim answers are passed over only up to a bound: past it the agent gets a 502 and the row says why (each
    costs the event loop a parse, and none is held to the head or body caps)."""
    final = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    answers["/many"] = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" * (MAX_INTERIM + 1) + final
    answers["/enough"] = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" * MAX_INTERIM + final
    got = send(proxy, [f"POST http://{HOST}/many HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json"],
               body=b"{}")
    assert got.startswith(b"HTTP/1.1 502") and b"more than 32 interim answers" in got, got
    got = send(proxy, [f"POST http://{HOST}/enough HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json"],
               body=b"{}")
    assert got.startswith(b"HTTP/1.1 201") and got.endswith(b"{}"), got
    rows = _until(lambda: (found := logged(proxy)) and len(found) == 2 and all(r["status"] or r["error"]
                                                                               for r in found) and found,
                  "both outcomes")
    assert isinstance(rows, list) and "more than 32 interim answers" in str(rows[0]["error"]), rows
    assert (rows[1]["status"], rows[1]["error"]) == (201, None), rows


def test_an_unfinished_answer_head_is_quoted_in_part(proxy: GoexProxy, answers: dict[str, bytes]) -> None:
    """An upstream that hangs up inside its answer's head: the agent's 502 and the row's error quote its first bytes
    and count the rest (mitmproxy quoted every byte of it, up to the head's bound, in both)."""
    answers["/cut"] = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"\x01" * (100 << 10)
    got = send(proxy, [f"GET http://{HOST}/cut HTTP/1.1", f"Host: {HOST}"])
    assert got.startswith(b"HTTP/1.1 502") and b"unexpected server response" in got, got[:300]
    assert len(got) < 4096 and f"and {len(answers['/cut']) - 200} bytes more".encode() in got, got
    rows = _until(lambda: (found := logged(proxy)) and found[0]["error"] and found, "the outcome")
    assert isinstance(rows, list), rows
    error = str(rows[0]["error"])
    assert error.startswith("unexpected server response: b'HTTP/1.1 200 OK") and len(error) < 1024, error
