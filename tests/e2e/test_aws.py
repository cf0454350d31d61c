"""AWS SigV4 re-signing: boto3 with placeholder keys through `goex-proxy exec`, moto_server behind a verifying relay.

The relay stands where AWS would: it checks each request's signature with botocore's own signer and the real keys,
then hands the request to moto_server (a real S3/DynamoDB implementation) and the answer back.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import free_port, wait_port

pytestmark = pytest.mark.e2e

REAL = {"access_key_id": "AKIACANARYREAL0000001", "secret_access_key": "CANARY/real+secret/key/0123456789abcdefghij",
        "session_token": "CANARY-session-token-FwoGZXIvYXdzEJr"}
BUCKET = "goex-test-bucket"
AWS_HOSTS = (f"{BUCKET}.s3.amazonaws.com", "s3.amazonaws.com", "dynamodb.us-east-1.amazonaws.com")

CREDENTIAL = """credentials:
  aws:
    secret: aws-keys
    hosts: ["**.amazonaws.com"]
    inject: {aws_sigv4: {}}
    env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN]
"""

POLICY = {"aws": """
    version: 1
    rules:
      - name: the test bucket and table
        allow: {hosts: ["goex-test-bucket.s3.amazonaws.com", "s3.amazonaws.com", "dynamodb.us-east-1.amazonaws.com"]}
"""}

AGENT = f"""
import json, os, boto3
out = {{"env_key": os.environ["AWS_ACCESS_KEY_ID"]}}
s3 = boto3.client("s3", region_name="us-east-1")
s3.create_bucket(Bucket="{BUCKET}")
s3.put_object(Bucket="{BUCKET}", Key="notes/hello.txt", Body=b"hello from the agent")
out["got"] = s3.get_object(Bucket="{BUCKET}", Key="notes/hello.txt")["Body"].read().decode()
out["listed"] = [o["Key"] for o in s3.list_objects_v2(Bucket="{BUCKET}", Prefix="notes/")["Contents"]]
s3.delete_object(Bucket="{BUCKET}", Key="notes/hello.txt")
out["after_delete"] = s3.list_objects_v2(Bucket="{BUCKET}").get("KeyCount")
db = boto3.client("dynamodb", region_name="us-east-1")
db.create_table(TableName="notes", KeySchema=[{{"AttributeName": "id", "KeyType": "HASH"}}],
                AttributeDefinitions=[{{"AttributeName": "id", "AttributeType": "S"}}], BillingMode="PAY_PER_REQUEST")
db.put_item(TableName="notes", Item={{"id": {{"S": "1"}}, "text": {{"S": "hi"}}}})
out["item"] = db.get_item(TableName="notes", Key={{"id": {{"S": "1"}}}})["Item"]["text"]["S"]
try:
    s3.get_object(Bucket="{BUCKET}", Key="missing")
except Exception as exc:
    out["missing"] = str(exc)
print(json.dumps(out))
"""

_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([^,]+), Signature=([0-9a-f]+)")


@dataclass
class Verdict:
    host: str
    method: str
    path: str
    key_id: str
    valid: bool
    headers: dict[str, str] = field(default_factory=dict)


def signature_is_valid(method: str, url: str, headers: dict[str, str], body: bytes, auth: re.Match[str]) -> bool:
    """Recompute the signature with botocore's signer and the real keys, as AWS would, and compare."""
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=url, data=body)
    for name in auth.group(5).split(";"):
        request.headers[name] = headers[name]
    request.context["timestamp"] = headers["x-amz-date"]
    signer_class = S3SigV4Auth if auth.group(4) == "s3" else SigV4Auth
    signer = signer_class(Credentials(REAL["access_key_id"], REAL["secret_access_key"], REAL["session_token"]),
                          auth.group(4), auth.group(3))
    canonical = signer.canonical_request(request)
    return bool(signer.signature(signer.string_to_sign(request, canonical), request) == auth.group(6))


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RelayServer

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        auth = _AUTH.fullmatch(headers.get("authorization", ""))
        url = f"https://{headers['host']}{self.path}"
        valid = auth is not None and signature_is_valid(self.command, url, headers, body, auth)
        with self.server.lock:
            self.server.verdicts.append(Verdict(headers["host"], self.command, self.path,
                                                auth.group(1) if auth else "", valid, headers))
        if not valid:
            data = b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        forwarded = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length")}
        moto = http.client.HTTPConnection("127.0.0.1", self.server.moto_port, timeout=30)
        moto.request(self.command, self.path, body=body, headers=forwarded)
        reply = moto.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for k, v in reply.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        moto.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class _RelayServer(ThreadingHTTPServer):
    daemon_threads = True
    moto_port: int
    verdicts: list[Verdict]
    lock: threading.Lock


@pytest.fixture
def moto() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60, proc=proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def relay(moto: int, upstream_ca: tuple[trustme.CA, Path]) -> Iterator[_RelayServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upstream_ca[0].issue_cert(*AWS_HOSTS).configure_cert(context)
    server = _RelayServer(("127.0.0.1", 0), _Relay)
    server.moto_port, server.verdicts, server.lock = moto, [], threading.Lock()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(make_proxy, relay: _RelayServer):
    url = f"https://127.0.0.1:{relay.server_address[1]}"
    p = make_proxy(POLICY, start=False, routes={h: url for h in AWS_HOSTS}, extra_config=CREDENTIAL)
    stored = p.run_cli("secrets", "set", "--config", str(p.config), "aws-keys", input=json.dumps(REAL).encode())
    assert stored.returncode == 0, stored.stderr
    return p.start()


def test_boto3_with_placeholder_keys_is_resigned_with_the_real_ones(proxy, relay):
    """S3 put/get/list/delete and DynamoDB work; every request AWS saw was validly signed with the real keys."""
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["env_key"] == "goex-placeholder-aws"
    assert out["got"] == "hello from the agent" and out["listed"] == ["notes/hello.txt"]
    assert out["after_delete"] == 0 and out["item"] == "hi"
    assert "NoSuchKey" in out["missing"]

    verdicts = relay.verdicts
    assert {(v.method, v.host) for v in verdicts} >= {("PUT", AWS_HOSTS[0]), ("GET", AWS_HOSTS[0]),
                                                      ("DELETE", AWS_HOSTS[0]), ("POST", AWS_HOSTS[2])}
    assert all(v.valid and v.key_id == REAL["access_key_id"] for v in verdicts), [v for v in verdicts if not v.valid]
    assert all(v.headers["x-amz-security-token"] == REAL["session_token"] for v in verdicts)
    put = next(v for v in verdicts if v.method == "PUT" and "hello.txt" in v.path)
    assert put.headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

    # The agent never saw the real keys, nor did the audit log or the proxy's output.
    audit_bytes = b"".join(f.read_bytes() for f in proxy.home.glob("audit.db*"))
    outputs = r.stdout + r.stderr + proxy.log_text() + proxy.cli("log", "--json", "--limit", "100").stdout
    for value in REAL.values():
        assert value not in outputs and value.encode() not in audit_bytes
    assert {row["credential"] for row in proxy.rows()} == {"aws"}


UNSIGNED = """
import json, requests
out = {}
r = requests.get("https://goex-test-bucket.s3.amazonaws.com/notes/x", timeout=20)
out["unsigned"] = [r.status_code, r.text]
r = requests.get("https://goex-test-bucket.s3.amazonaws.com/notes/x?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                 "&X-Amz-Credential=goex-placeholder-aws%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
                 "&X-Amz-Signature=abc", timeout=20)
out["presigned"] = [r.status_code, r.text]
print(json.dumps(out))
"""


def test_requests_it_cannot_resign_are_denied(proxy, relay):
    """Unsigned and presigned requests to a SigV4-bound host are denied with the reason, and never reach AWS."""
    r = proxy.exec("mailbot", sys.executable, "-c", UNSIGNED)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["unsigned"][0] == 403 and "must be signed by the SDK" in out["unsigned"][1]
    assert out["presigned"][0] == 403 and "presigned URLs are not re-signed" in out["presigned"][1]
    assert relay.verdicts == []


def test_secrets_set_rejects_keys_that_are_not_aws_keys(make_proxy, relay):
    p = make_proxy(POLICY, start=False, extra_config=CREDENTIAL)
    r = p.run_cli("secrets", "set", "--config", str(p.config), "aws-keys", input=b"AKIA-and-not-json-at-all")
    assert r.returncode == 2 and "AWS keys must be JSON" in r.stderr
    assert "AKIA-and-not-json-at-all" not in r.stderr + r.stdout
