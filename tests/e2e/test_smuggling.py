"""Normalisation and request smuggling from inside a jail: no spelling of a denied path ever reaches the upstream."""

from __future__ import annotations

import base64
import gzip
import json
import os
import posixpath
import socket
import ssl
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

pytestmark = pytest.mark.e2e

# -- the client: this file, run by path inside the jail, reads the cases on stdin (stdlib only) ------------------------

AUTH = "<PROXY-AUTH>"   # replaced by the client with `Basic base64(agent:token)` from HTTPS_PROXY
IDLE = 2.0              # seconds without a byte after which a connection's answer is taken as complete


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _read_all(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the proxy sends until it closes the connection (or goes quiet), and how the reading ended."""
    data, ending = b"", "closed"
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        ending = "idle"
    except ssl.SSLEOFError:
        ending = "closed"
    except OSError as e:
        ending = f"{type(e).__name__}: {e}"
    return data, ending


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            _, _, data = data.partition(b"\r\n")
            return body, data
        body, data = body + data[:size], data[size + 2:]


def _responses(data: bytes) -> list[dict[str, Any]]:
    """The HTTP/1.1 responses in `data`, in order: status, lower-cased headers, body as text."""
    out: list[dict[str, Any]] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"HTTP/"):
            out.append({"status": None, "garbage": data[:300].decode("latin-1")})
            break
        lines = head.decode("latin-1").split("\r\n")
        headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
        if "content-length" in headers:
            size = int(headers["content-length"])
            body, data = rest[:size], rest[size:]
        elif "chunked" in headers.get("transfer-encoding", ""):
            body, data = _dechunk(rest)
        else:
            body, data = rest, b""
        out.append({"status": int(lines[0].split()[1]), "headers": headers, "body": body.decode("utf-8", "replace")})
    return out


def _run_case(case: dict[str, Any], proxy: tuple[str, int], auth: str, ca: str) -> dict[str, Any]:
    """Send one case's bytes exactly as given, through a CONNECT tunnel (TLS with the case's SNI, or plain) or as a
    plain proxy request, and parse what comes back."""
    result: dict[str, Any] = {"name": case["name"], "connect": None, "tls_error": None, "responses": [],
                              "ending": None}
    try:
        sock = socket.create_connection(proxy, timeout=IDLE)
        if case["connect"]:
            sock.sendall(f"CONNECT {case['connect']} HTTP/1.1\r\nHost: {case['connect']}\r\n"
                         f"Proxy-Authorization: {auth}\r\n\r\n".encode())
            head = _read_head(sock)
            result["connect"] = head.split(b"\r\n", 1)[0].decode("latin-1")
            if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                return result
            if case["tls"]:
                context = ssl.create_default_context(cafile=ca)
                context.check_hostname = False   # the SNI under test may be any name; the chain is still verified
                try:
                    sock = context.wrap_socket(sock, server_hostname=case["sni"])
                except (ssl.SSLError, OSError) as e:
                    result["tls_error"] = f"{type(e).__name__}: {e}"
                    return result
        with sock:
            sock.sendall(case["raw"].encode("latin-1").replace(AUTH.encode(), auth.encode()))
            data, result["ending"] = _read_all(sock)
        result["responses"] = _responses(data)
    except OSError as e:
        result["ending"] = f"{type(e).__name__}: {e}"
    return result


def _client_main() -> None:
    """Read the cases (JSON) on stdin, run them all at once, print their results (JSON) on stdout."""
    cases = json.load(sys.stdin)
    url = urlsplit(os.environ["HTTPS_PROXY"])
    assert url.hostname and url.port and url.username and url.password is not None
    proxy, ca = (url.hostname, url.port), os.environ["SSL_CERT_FILE"]
    auth = "Basic " + base64.b64encode(f"{unquote(url.username)}:{unquote(url.password)}".encode()).decode()
    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(lambda c: _run_case(c, proxy, auth, ca), cases))
    json.dump(results, sys.stdout)


# -- the cases ----------------------------------------------------------------------------------------------------------

GITHUB = "api.github.com"
SECRET = "/repos/octo/secret"
DENY_RULE = "repos/not the secret repo"
POLICY = {"repos": """
    version: 1
    name: repos
    rules:
      - name: read repos
        allow: {host: api.github.com, methods: [GET], path: "/repos/**"}
      - name: open issues
        allow:
          host: api.github.com
          methods: [POST]
          path: "/repos/*/*/issues"
          when: 'request.json.channel == "ok"'
      - name: post notes
        allow: {host: api.github.com, methods: [POST], path: /repos/octo/hello/notes}
      - name: not the secret repo
        deny: {host: api.github.com, path: "/repos/octo/secret{,/**}", reason: "the secret repo is off limits"}
"""}
#: a complete request for the secret repo, hidden where a desynchronised parser would read it as the next request
SMUGGLED = f"GET {SECRET}/x HTTP/1.1\r\nHost: {GITHUB}\r\nConnection: close\r\n\r\n"
ISSUE = '{"title":"t","channel":"ok"}'
FORBIDDEN = b'{"title":"t","channel":"forbidden"}'
NOTES = "/repos/octo/hello/notes"


def tls(raw: str, sni: str | None = GITHUB, connect: str = f"{GITHUB}:443") -> dict[str, Any]:
    """`raw` inside a CONNECT tunnel, over TLS with server name `sni` (None: no SNI)."""
    return {"connect": connect, "tls": True, "sni": sni, "raw": raw}


def tunnel(raw: str, connect: str = f"{GITHUB}:443") -> dict[str, Any]:
    """`raw` inside a CONNECT tunnel, without TLS."""
    return {"connect": connect, "tls": False, "sni": None, "raw": raw}


def plain(raw: str) -> dict[str, Any]:
    """`raw` sent to the proxy itself (each request carries its own Proxy-Authorization)."""
    return {"connect": None, "tls": False, "sni": None, "raw": raw}


def get(target: str, host: str | None = GITHUB, extra: str = "") -> str:
    host_line = f"Host: {host}\r\n" if host is not None else ""
    return f"GET {target} HTTP/1.1\r\n{host_line}{extra}Connection: close\r\n\r\n"


def absolute(url: str, host: str | None = GITHUB) -> str:
    return get(url, host, f"Proxy-Authorization: {AUTH}\r\n")


def post(body: bytes | str, headers: str = "", target: str = "/repos/octo/hello/issues", length: bool = True,
         close: bool = True, proxy_auth: bool = False, content_type: str = "application/json") -> str:
    """A POST with `headers` (CRLF-terminated lines) and `body` sent as they are (a Content-Length of the body's
    size unless `length` is false)."""
    body = body.decode("latin-1") if isinstance(body, bytes) else body
    return (f"POST {target} HTTP/1.1\r\nHost: {GITHUB}\r\nContent-Type: {content_type}\r\n{headers}"
            + (f"Proxy-Authorization: {AUTH}\r\n" if proxy_auth else "")
            + (f"Content-Length: {len(body)}\r\n" if length else "") + ("Connection: close\r\n" if close else "")
            + "\r\n" + body)


def chunked(text: str) -> str:
    return f"{len(text):x}\r\n{text}\r\n0\r\n\r\n"


@dataclass(frozen=True)
class Case:
    """What to send and what must come back, one outcome per response: "forwarded" (answered by the upstream,
    decision allow), "deny" (403 by the deny rule), "default deny" (403, no rule allows it), "request-target" /
    "request-body" (403 before policy), "request-reading" (403: servers could read it otherwise), "bad request" (400
    from the proxy's HTTP parser, or the connection closed without an answer)."""

    send: dict[str, Any]
    expect: tuple[str, ...]
    seen: tuple[tuple[str, str], ...] = ()   # the (method, path) the upstream must receive, in no particular order
    tls_refusal: bool = False                # a failed TLS handshake also counts as refused


def refused(send: dict[str, Any], outcome: str = "deny") -> Case:
    return Case(send, (outcome,))


CASES: dict[str, Case] = {
    # controls: the same client reaches the upstream, so the refusals below are the proxy's doing
    "control: an allowed GET": Case(tls(get("/repos/octo/hello")), ("forwarded",), (("GET", "/repos/octo/hello"),)),
    "control: an allowed POST": Case(tls(post(ISSUE)), ("forwarded",), (("POST", "/repos/octo/hello/issues"),)),
    "control: a gzip JSON body the condition allows": Case(
        tls(post(gzip.compress(ISSUE.encode()), "Content-Encoding: gzip\r\n")), ("forwarded",),
        (("POST", "/repos/octo/hello/issues"),)),
    "control: plain HTTP absolute-form": Case(plain(absolute(f"http://{GITHUB}/repos/octo/hello/plain")),
                                              ("forwarded",), (("GET", "/repos/octo/hello/plain"),)),
    "control: a lone %2F allowed read both ways": Case(tls(get("/repos/octo/hello/a%2Fb")), ("forwarded",),
                                                       (("GET", "/repos/octo/hello/a%2Fb"),)),
    "control: an escaped % allowed read both ways": Case(tls(get("/repos/octo/hello/100%2525")), ("forwarded",),
                                                         (("GET", "/repos/octo/hello/100%2525"),)),
    "control: Host in upper case with a trailing dot": Case(tls(get("/repos/octo/hello/host", "API.GitHub.com.")),
                                                            ("forwarded",), (("GET", "/repos/octo/hello/host"),)),
    # the denied path and its other spellings
    "the secret path": refused(tls(get(f"{SECRET}/x"))),
    "the secret repo itself": refused(tls(get(SECRET))),
    "percent-encoded unreserved characters": refused(tls(get("/repos/octo/%73%65cret/x"))),
    "a '..' segment": refused(tls(get("/repos/octo/hello/../secret/x")), "request-target"),
    "a '.' segment": refused(tls(get("/repos/octo/./secret/x")), "request-target"),
    "an escaped '..' segment": refused(tls(get("/repos/octo/hello/%2e%2E/secret/x")), "request-target"),
    "an empty segment '//'": refused(tls(get("/repos/octo//secret/x")), "request-target"),
    "a ';' parameter on the denied segment": refused(tls(get("/repos/octo/secret;x=1/x")), "request-target"),
    "a ';' before a '..' segment": refused(tls(get("/repos/octo/hello;/../secret/x")), "request-target"),
    "%2F..%2F": refused(tls(get("/repos/octo/hello%2F..%2Fsecret/x")), "request-target"),
    "a lone %2F into the denied directory": refused(tls(get("/repos/octo%2Fsecret/x")), "request-target"),
    "escapes encoded twice (a server that decodes twice)": refused(tls(get("/repos/octo/%2573ecret/x")),
                                                                   "request-target"),
    "a '..' encoded twice": refused(tls(get("/repos/octo/hello/%252e%252e/secret/x")), "request-target"),
    "backslashes": refused(tls(get("/repos/octo/hello\\..\\secret/x")), "request-target"),
    "escaped backslashes": refused(tls(get("/repos/octo/hello%5C..%5Csecret/x")), "request-target"),
    "a raw '#' before dot segments": refused(tls(get("/repos/octo/hello#/../secret/x")), "request-target"),
    "absolute-form inside the tunnel": refused(tls(get(f"https://{GITHUB}{SECRET}/x")), "request-target"),
    "origin-form sent to the proxy itself": refused(plain(get(f"{SECRET}/x", GITHUB,
                                                              f"Proxy-Authorization: {AUTH}\r\n"))),
    "absolute-form with an escaped secret path": refused(plain(absolute(f"http://{GITHUB}/repos/octo/%73ecret/x"))),
    # where the request goes: the CONNECT target or URL, the Host header and the TLS server name must agree
    "Host in upper case with a trailing dot, secret path": refused(tls(get(f"{SECRET}/x", "API.GITHUB.COM."))),
    "no Host header, secret path": refused(tls(get(f"{SECRET}/x", None))),
    "no SNI, secret path": refused(tls(get(f"{SECRET}/x"), sni=None)),
    "Host names another host than CONNECT and SNI": refused(tls(get("/repos/octo/hello", "evil.example")),
                                                            "request-target"),
    "Host names another port": refused(tls(get("/repos/octo/hello", f"{GITHUB}:8443")), "request-target"),
    "two Host headers": refused(tls(get("/repos/octo/hello", GITHUB, "Host: evil.example\r\n")), "request-target"),
    "SNI names another host than CONNECT": Case(tls(get("/repos/octo/hello"), sni="other.example"),
                                                ("request-target",), tls_refusal=True),
    "SNI names another host, secret path": Case(tls(get(f"{SECRET}/x"), sni="other.example"), ("request-target",),
                                                tls_refusal=True),
    "CONNECT names another host than SNI and Host": refused(tls(get("/repos/octo/hello"), connect="evil.example:443"),
                                                            "request-target"),
    "absolute-form inside the tunnel naming another host": refused(tls(get("https://evil.example/repos/octo/hello")),
                                                                   "request-target"),
    "absolute-form inside the tunnel naming another port": refused(
        tls(get(f"https://{GITHUB}:8443/repos/octo/hello")), "request-target"),
    "absolute-form inside a TLS tunnel saying http://": refused(tls(get(f"http://{GITHUB}/repos/octo/hello")),
                                                               "request-target"),
    "plain HTTP inside a CONNECT tunnel, secret path": refused(tunnel(get(f"{SECRET}/x"))),
    "plain HTTP inside a CONNECT tunnel, Host names another host": refused(
        tunnel(get("/repos/octo/hello", "evil.example")), "request-target"),
    "plain HTTP inside a CONNECT tunnel, absolute-form naming another host": refused(
        tunnel(get("http://evil.example/repos/octo/hello")), "request-target"),
    "absolute-form whose host disagrees with Host": refused(
        plain(absolute(f"http://{GITHUB}/repos/octo/hello", "evil.example")), "request-target"),
    "absolute-form naming another host than Host": refused(plain(absolute("http://evil.example/repos/octo/hello")),
                                                           "request-target"),
    "absolute-form with userinfo": refused(plain(absolute(f"http://evil.example@{GITHUB}{SECRET}/x")), "bad request"),
    # bodies: the policy reads them as the upstream will
    "a gzip JSON body the condition forbids": refused(tls(post(gzip.compress(FORBIDDEN), "Content-Encoding: gzip\r\n")),
                                                      "default deny"),
    "the forbidden gzip body labelled compress": refused(
        tls(post(gzip.compress(FORBIDDEN), "Content-Encoding: compress\r\n")), "request-body"),
    "an allowed JSON body labelled compress": refused(tls(post(ISSUE, "Content-Encoding: compress\r\n")),
                                                      "request-body"),
    "duplicate JSON keys": refused(tls(post('{"title":"t","channel":"forbidden","channel":"ok"}')), "request-body"),
    "duplicate JSON keys, gzipped": refused(
        tls(post(gzip.compress(b'{"title":"t","channel":"forbidden","channel":"ok"}'), "Content-Encoding: gzip\r\n")),
        "request-body"),
    # keys sent twice: servers differ on which value they read, and no rule here accepts them
    "a query key sent twice": refused(tls(get("/repos/octo/hello?ref=main&ref=dev")), "request-reading"),
    "a form field sent twice": refused(tls(post("title=t&title=u", target=NOTES,
                                                content_type="application/x-www-form-urlencoded")), "request-reading"),
    # framing: a request for the secret path hidden in an allowed POST must never reach the upstream as a request
    "a Content-Length body holding a request": Case(tls(post(SMUGGLED, target=NOTES, content_type="text/plain")),
                                                    ("forwarded",), (("POST", NOTES),)),
    "a chunked body holding a request": Case(
        tls(post(chunked(SMUGGLED), "Transfer-Encoding: chunked\r\n", NOTES, length=False, content_type="text/plain")),
        ("forwarded",), (("POST", NOTES),)),
    "a JSON Content-Type over a body that is not JSON": refused(tls(post(SMUGGLED, target=NOTES)), "request-body"),
    "a chunked body followed by a pipelined request": Case(
        tls(post(chunked(ISSUE) + SMUGGLED, "Transfer-Encoding: chunked\r\n", NOTES, length=False, close=False)),
        ("forwarded", "deny"), (("POST", NOTES),)),
    "Content-Length and Transfer-Encoding: chunked": refused(
        tls(post("0\r\n\r\n" + SMUGGLED, "Transfer-Encoding: chunked\r\n", NOTES, close=False)), "bad request"),
    "Transfer-Encoding: chunked and a short Content-Length": refused(tls(post(
        chunked(ISSUE) + SMUGGLED, f"Transfer-Encoding: chunked\r\nContent-Length: {len(ISSUE)}\r\n", NOTES,
        length=False, close=False)), "bad request"),
    "two Content-Length headers": refused(
        tls(post(ISSUE + SMUGGLED, f"Content-Length: {len(ISSUE)}\r\n", NOTES, close=False)), "bad request"),
    "Transfer-Encoding: xchunked": refused(
        tls(post(chunked(ISSUE) + SMUGGLED, "Transfer-Encoding: xchunked\r\n", NOTES, close=False)), "bad request"),
    "Transfer-Encoding: chunked, identity": refused(tls(post(
        chunked(ISSUE) + SMUGGLED, "Transfer-Encoding: chunked, identity\r\n", NOTES, length=False, close=False)),
        "bad request"),
    "a Content-Length with a sign": refused(tls(post(
        ISSUE + SMUGGLED, f"Content-Length: +{len(ISSUE)}\r\n", NOTES, length=False, close=False)), "bad request"),
    "plain HTTP with Content-Length and Transfer-Encoding": refused(plain(post(
        "0\r\n\r\n" + SMUGGLED, "Transfer-Encoding: chunked\r\n", f"http://{GITHUB}{NOTES}", close=False,
        proxy_auth=True)), "bad request"),
}


# -- running them -------------------------------------------------------------------------------------------------------

@dataclass
class Outcomes:
    results: dict[str, dict[str, Any]]   # case name -> what the client got
    seen: list[Any]                      # every request the upstream received (tests.fakes.Seen)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, upstream_ca: tuple[Any, Any]) -> Iterator[Outcomes]:
    """One fake upstream (with a private octo/secret repo) and one goex-proxy; every case run at once by one client
    in one jail."""
    from tests.conftest import _CLEARED, HOSTS, GoexProxy
    from tests.fakes import FakeUpstream

    ca, ca_path = upstream_ca
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*HOSTS).configure_cert(context)
    upstream = FakeUpstream(context)
    upstream.state.github.seed_repo("octo/secret", private=True)
    with pytest.MonkeyPatch.context() as mp:   # the function-scoped clean_env has not run yet
        for name in _CLEARED:
            mp.delenv(name, raising=False)
        proxy = GoexProxy(tmp_path_factory.mktemp("smuggling") / "home", upstream, ca_path, POLICY)
    try:
        proxy.start()
        cases = [{"name": name, **case.send} for name, case in CASES.items()]
        run = proxy.run_cli("exec", "--jail", "--config", str(proxy.config), "--agent", "mailbot", "--",
                            sys.executable, __file__, input=json.dumps(cases).encode(), timeout=60)
        assert run.returncode == 0, run.stderr
        results = {r["name"]: r for r in json.loads(run.stdout)}
        with upstream.state.lock:
            seen = list(upstream.state.seen)
        yield Outcomes(results, seen)
    finally:
        proxy.stop()
        upstream.close()


def _problems(result: dict[str, Any], case: Case) -> list[str]:
    """How `result` differs from what `case` expects (empty when it matches)."""
    if case.send["connect"] and not (result["connect"] or "").startswith("HTTP/1.1 200"):
        return [f"CONNECT answered {result['connect']!r}"]
    if result["tls_error"] is not None:
        return [] if case.tls_refusal else [f"TLS failed: {result['tls_error']}"]
    got = result["responses"]
    if list(case.expect) == ["bad request"] and not got and result["ending"] == "closed":
        return []   # closed without an answer: refused too
    if len(got) != len(case.expect):
        return [f"expected {len(case.expect)} response(s) {list(case.expect)}, got {len(got)}: "
                f"{[r.get('status') for r in got]} (connection {result['ending']})"]
    problems = []
    for i, (response, want) in enumerate(zip(got, case.expect, strict=True)):
        status, headers = response.get("status"), response.get("headers", {})
        rule = None
        if status == 403 and headers.get("content-type") == "application/json":
            rule = json.loads(response["body"]).get("rule")
        if want == "forwarded":
            ok = headers.get("x-goex-decision") == "allow" and status not in (400, 403)
        elif want == "bad request":
            ok = status == 400
        elif want == "default deny":
            ok = status == 403 and headers.get("x-goex-rule") == "(default deny)"
        else:
            ok = status == 403 and rule == (DENY_RULE if want == "deny" else want)
        if not ok:
            problems.append(f"response {i + 1}: expected {want}, got {status} rule={rule!r} "
                            f"body={response.get('body', response.get('garbage', ''))[:300]!r}")
    return problems


@pytest.mark.parametrize("name", list(CASES))
def test_case(outcomes: Outcomes, name: str) -> None:
    """Each case gets exactly the answers it should: the controls from the upstream, everything else refused."""
    result = outcomes.results[name]
    problems = _problems(result, CASES[name])
    assert not problems, f"{name}: sent {CASES[name].send['raw']!r}: " + "; ".join(problems)


def _readings(path: str) -> set[str]:
    """The lenient ways a server could read a path: the path of an absolute-form target, escapes decoded until none
    are left, backslashes as '/', ';' parameters dropped, dot and empty segments resolved, lower case; cut at a '#'
    and not."""
    if not path.startswith("/") and "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    while (decoded := unquote(path)) != path:
        path = decoded
    path = path.replace("\\", "/").split("?")[0]
    out = set()
    for whole in (path, path.split("#")[0]):
        whole = "/".join(segment.split(";")[0] for segment in whole.split("/"))
        out.add("/" + posixpath.normpath("/" + whole).lstrip("/").lower())   # normpath keeps a leading "//"
    return out


def _is_secret(path: str) -> bool:
    return any(reading == SECRET or reading.startswith(SECRET + "/") for reading in _readings(path))


def test_the_upstream_never_saw_the_secret(outcomes: Outcomes) -> None:
    """However a server might read the paths the upstream received, none of them is the secret repo or under it."""
    reached = [(s.method, s.host, s.path) for s in outcomes.seen if _is_secret(s.path)]
    assert reached == [], f"the upstream received requests for the denied path: {reached}"


def test_the_check_reads_every_spelling_sent_as_the_secret() -> None:
    """The check above is not vacuous: each request target sent here that spells the secret path reads as it."""
    targets = [t for c in CASES.values() if "secret" in unquote(unquote(t := c.send["raw"].split(" ")[1]))]
    assert len(targets) >= 20
    assert [t for t in targets if not _is_secret(t)] == []
    assert not _is_secret("/repos/octo/hello/a%2Fb") and not _is_secret("/repos/octo/secretive")


def test_the_upstream_saw_exactly_the_allowed_requests(outcomes: Outcomes) -> None:
    """The upstream received the allowed requests and nothing else: no refused case, and no request hidden in a
    body, reached it."""
    expected = Counter(seen for case in CASES.values() for seen in case.seen)
    got = Counter((s.method, s.path) for s in outcomes.seen)
    unexpected = [(s.method, s.host, s.path, s.body[:200]) for s in outcomes.seen
                  if (s.method, s.path) in got - expected]
    missing = sorted(expected - got)
    assert not unexpected and not missing, f"received though refused: {unexpected}; allowed but not received: {missing}"


def test_bodies_reach_the_upstream_as_sent(outcomes: Outcomes) -> None:
    """An allowed body holding a request arrives as that body (Content-Length framed; the fake reads no chunked
    bodies, so a chunked one arrives empty and its chunks, led by a size line, cannot parse as a request), and the
    gzip control arrives still gzipped."""
    bodies = [s.body for s in outcomes.seen if s.method == "POST"]
    assert SMUGGLED.encode() in bodies
    assert any(b[:2] == b"\x1f\x8b" and gzip.decompress(b) == ISSUE.encode() for b in bodies)


if __name__ == "__main__":
    _client_main()
