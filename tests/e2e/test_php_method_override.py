"""A `_method` field in a multipart/form-data body, against the parser that reads it in production: PHP's own
(rfc1867.c, which fills `$_POST` before Laravel or Symfony run). Each body is sent to `php -S` as is; every method PHP
would run the POST as (`strtoupper(trim($_POST['_method']))`, each value if it is an array) must be one the policy
reads in `override_methods` (or the policy reads one it cannot name, "", which no rule allows). Reading more than PHP
is fine; reading less would let a DELETE through as a POST."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Iterator

import pytest

from goex_proxy.policy.requestview import RequestView
from tests.conftest import TOKENS, GoexProxy, free_port, wait_port

pytestmark = pytest.mark.e2e

#: Prints what PHP parsed: `$_POST` and the method a Laravel-style override would run, base64 (values hold any byte).
ROUTER = r"""<?php
header('Content-Type: application/json');
$methods = [];
if ($_SERVER['REQUEST_METHOD'] === 'POST' && isset($_POST['_method'])) {
    $values = is_array($_POST['_method']) ? $_POST['_method'] : [$_POST['_method']];
    array_walk_recursive($values, function ($v) use (&$methods) {
        if (is_string($v)) { $methods[] = base64_encode(strtoupper(trim($v))); }
    });
}
echo json_encode(['methods' => $methods, 'post' => array_keys($_POST)]);
"""

B = "XB"
CT = f"multipart/form-data; boundary={B}"
D = b'Content-Disposition: form-data; name="_method"'
#: A part that follows the `_method` part: the value a parser that misses where the `_method` part's value starts reads.
OTHER = b'Content-Disposition: form-data; name="title"\r\n\r\nPOST'


def _form(*parts: bytes) -> bytes:
    return b"".join(b"--XB\r\n" + part + b"\r\n" for part in parts) + b"--XB--\r\n"


def _padded(prefix: bytes, size: int) -> bytes:
    return prefix + b"A" * (size - len(prefix))


#: Bodies (under the Content-Type CT unless a pair) that PHP reads as a DELETE.
BODIES: dict[str, bytes | tuple[str, bytes]] = {
    "plain": _form(D + b"\r\n\r\nDELETE"),
    "LF line ends": b'--XB\nContent-Disposition: form-data; name="_method"\n\nDELETE\n--XB--\n',
    "quoted boundary with parameters around it": (
        'multipart/form-data; charset=x; boundary="XB"; y', _form(D + b"\r\n\r\nDELETE")),
    "name as a key PHP mangles: .method": _form(b'Content-Disposition: form-data; name=".method"\r\n\r\nDELETE'),
    "name as a key PHP mangles: _method[]": _form(b'Content-Disposition: form-data; name="_method[]"\r\n\r\nDELETE'),
    "value with white space around it": _form(D + b"\r\n\r\n\x0bdelete \t"),
    "value ending in a NUL (trim drops it)": _form(D + b"\r\n\r\nDELETE\x00"),
    "a part after the closing boundary": _form(OTHER) + b"--XB\r\n" + D + b"\r\n\r\nDELETE\r\n--XB--\r\n",
    "no closing boundary": b"--XB\r\n" + D + b"\r\n\r\nDELETE",
    # a header's continuation lines (a line starting with white space, or without a colon) join on with nothing
    "disposition folded before name": _form(b'Content-Disposition: form-data;\r\n name="_method"\r\n\r\nDELETE'),
    "disposition folded on a line without a colon": _form(
        b'Content-Disposition: form-data;\r\nname="_method"\r\n\r\nDELETE'),
    "name split over two lines": _form(b'Content-Disposition: form-data; name="_met\r\nhod"\r\n\r\nDELETE'),
    "disposition value on the next line": _form(b'Content-Disposition:\r\n form-data; name="_method"\r\n\r\nDELETE'),
    "lone CR before name": _form(b'Content-Disposition: form-data;\r name="_method"\r\n\r\nDELETE'),
    "lone CR after the colon": _form(b'Content-Disposition:\r form-data; name="_method"\r\n\r\nDELETE'),
    "lone CR after name=": _form(b'Content-Disposition: form-data; name=\r"_method"\r\n\r\nDELETE'),
    "name in single quotes": _form(b"Content-Disposition: form-data; name='_method'\r\n\r\nDELETE"),
    "name in single quotes holding a ;": _form(b"Content-Disposition: form-data; name='_method'; x='a;b'\r\n\r\nDELETE"),
    "name==": _form(b"Content-Disposition: form-data; name==_method\r\n\r\nDELETE"),
    "bare name with a quoted ; in brackets": _form(b'Content-Disposition: form-data; name=_method["a;b"]\r\n\r\nDELETE'),
    # PHP reads a header line to its first NUL, and ends the headers at a line starting with one
    "line of a NUL ends the headers": _form(D + b"\r\n\x00\r\nDELETE", OTHER),
    "line starting with a NUL ends the headers": _form(D + b"\r\n\x00junk\r\nDELETE", OTHER),
    "NUL cuts a line joined to the next": _form(b'Content-Disposition: form-data; name="_met\x00zz\r\nhod"\r\n\r\nDELETE'),
    # PHP reads a line longer than its 5 KiB buffer as pieces of 5120 bytes, each a line of its own
    "header line of 5119 bytes and CR: an empty piece ends the headers": _form(
        D + b"\r\n" + _padded(b"X-Pad: ", 5119) + b"\r\nDELETE", OTHER),
    "header line of 5120 bytes: an empty piece ends the headers": _form(
        D + b"\r\n" + _padded(b"X-Pad: ", 5120) + b"\r\nDELETE", OTHER),
    "header line of 10240 bytes": _form(D + b"\r\n" + _padded(b"X-Pad: ", 10240) + b"\r\nDELETE", OTHER),
    "piece starting with a NUL ends the headers": _form(
        D + b"\r\n" + _padded(b"X-Pad: ", 5120) + b"\x00" + b"B" * 5119 + b"\r\nDELETE", OTHER),
    "name cut where a piece ends": _form(
        _padded(b"Content-Disposition: form-data; x=", 5120 - len(b"; name=_method")) + b"; name=_method"
        + b"X:y\r\n\r\nDELETE"),
    "NUL cuts a piece joined to the next": _form(
        _padded(b'Content-Disposition: form-data; name="_met\x00', 5120) + b'hod"\r\n\r\nDELETE'),
    "piece without a colon continues the disposition": _form(
        b'Content-Disposition: form-data; name="_met\r\n' + _padded(b'hod" ', 5120) + b"a:b\r\n\r\nDELETE"),
}


@pytest.fixture(scope="module")
def php_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`php -S` on a free port, its router printing what PHP parsed (the port)."""
    php = shutil.which("php")
    assert php is not None, "PHP's command-line interpreter is needed: tests/install-tools installs it"
    root = tmp_path_factory.mktemp("php")
    (root / "router.php").write_text(ROUTER)
    port = free_port()
    proc = subprocess.Popen([php, "-n", "-S", f"127.0.0.1:{port}", str(root / "router.php")], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def _php_methods(port: int, content_type: str, body: bytes) -> set[str]:
    """The methods PHP would run this POST as, strtoupper(trim()) of each `_method` value it parsed."""
    head = (f"POST / HTTP/1.1\r\nHost: php.example\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    answer = _exchange(port, head.encode("latin-1") + body)
    parsed = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return {base64.b64decode(m).decode("latin-1") for m in parsed["methods"]}


def _policy_methods(content_type: str, body: bytes) -> frozenset[str]:
    return RequestView(agent="a", method="POST", scheme="http", host="h", port=80, path="/",
                       headers=(("content-type", content_type),), body=body).override_methods


@pytest.mark.parametrize("case", list(BODIES))
def test_every_method_php_reads_is_read_by_the_policy(php_server: int, case: str) -> None:
    content_type, body = BODIES[case] if isinstance(BODIES[case], tuple) else (CT, BODIES[case])
    php = _php_methods(php_server, content_type, body)
    assert php == {"DELETE"}, f"{case}: PHP reads {php}: the case is not what it says"
    policy = _policy_methods(content_type, body)
    assert "" in policy or php <= policy, f"{case}: PHP runs {php}, the policy reads {set(policy)}"


POLICY = {"php": """
    version: 1
    rules:
      - name: forms may be posted
        allow: {host: php.example, methods: [GET, POST]}
"""}


def test_a_folded_method_does_not_reach_php_through_the_proxy(make_proxy, php_server: int) -> None:
    """Through the real proxy: a form posted without `_method` reaches PHP; one whose `_method` (DELETE) is hidden in a
    folded Content-Disposition is refused before PHP sees it."""
    proxy: GoexProxy = make_proxy(POLICY, routes={"php.example": f"http://127.0.0.1:{php_server}"})
    creds = base64.b64encode(f"mailbot:{TOKENS['mailbot']}".encode()).decode()

    def post(body: bytes) -> bytes:
        head = textwrap.dedent(f"""\
            POST http://php.example/items/1 HTTP/1.1
            Host: php.example
            Proxy-Authorization: Basic {creds}
            Content-Type: {CT}
            Content-Length: {len(body)}
            Connection: close
            """).replace("\n", "\r\n") + "\r\n"
        return _exchange(proxy.port, head.encode() + body)

    allowed = post(_form(b'Content-Disposition: form-data; name="title"\r\n\r\nhello'))
    assert allowed.startswith(b"HTTP/1.1 200"), allowed[:300]
    assert json.loads(allowed.split(b"\r\n\r\n", 1)[1]) == {"methods": [], "post": ["title"]}
    hidden = _form(b'Content-Disposition: form-data; name="_met\r\nhod"\r\n\r\nDELETE')
    refused = post(hidden)
    assert refused.startswith(b"HTTP/1.1 403"), refused[:300]
    assert b"DELETE" in refused
