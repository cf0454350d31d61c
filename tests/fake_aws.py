"""Where AWS would be: a relay that checks every SigV4 signature with botocore's own signer and the real keys, then
hands the request to moto_server (a real S3 and DynamoDB implementation) and its answer back."""

from __future__ import annotations

import http.client
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: The keys only the proxy holds (a canary: they must never show up anywhere but at "AWS").
REAL = {"access_key_id": "AKIACANARYREAL0000001", "secret_access_key": "CANARY/real+secret/key/0123456789abcdefghij",
        "session_token": "CANARY-session-token-FwoGZXIvYXdzEJr"}
BUCKET = "goex-test-bucket"
PLAIN_BUCKET = "goex-plain-bucket"   # never versioned
NEW_BUCKET = "goex-new-bucket"       # created by an agent, virtual-hosted style
AWS_HOSTS = (f"{BUCKET}.s3.amazonaws.com", "s3.amazonaws.com", "dynamodb.us-east-1.amazonaws.com",
             f"{PLAIN_BUCKET}.s3.amazonaws.com", f"{NEW_BUCKET}.s3.amazonaws.com")
#: The config entry that has the proxy re-sign AWS requests with the keys stored as `aws-keys`.
AWS_CREDENTIAL = """credentials:
  aws:
    secret: aws-keys
    hosts: ["**.amazonaws.com"]
    inject: {aws_sigv4: {}}
    env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN]
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
    server: RelayServer

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


class RelayServer(ThreadingHTTPServer):
    """The relay on 127.0.0.1 over HTTPS; `verdicts` lists every request it saw and whether it was validly signed."""

    daemon_threads = True

    def __init__(self, moto_port: int, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.moto_port = moto_port
        self.verdicts: list[Verdict] = []
        self.lock = threading.Lock()
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
