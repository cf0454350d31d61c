"""AWS Signature Version 4: a request the agent signed with placeholder keys is signed again with the real keys."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

#: x-amz-content-sha256 values that stand for "the body is not hashed into the signature"; kept as the agent chose.
UNHASHED_PAYLOADS = frozenset({"UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"})
#: Bodies whose every chunk is signed with the secret key: re-signing them would mean re-chunking the body.
CHUNK_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
#: Headers the re-signing replaces, whatever the agent put there.
REPLACED = frozenset({"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"})

_AUTH = re.compile(r"AWS4-HMAC-SHA256\s+Credential=([^/\s,]*)/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request\s*,"
                   r"\s*SignedHeaders=([a-z0-9;_.-]+)\s*,\s*Signature=[0-9a-f]+\s*$")


class SigningError(ValueError):
    """A request that cannot be re-signed; the message says why, for the agent's 403."""


@dataclass(frozen=True)
class AwsKeys:
    """An access key pair and, for temporary credentials, a session token."""

    access_key_id: str
    secret_access_key: str
    session_token: str = ""

    @classmethod
    def loads(cls, text: str) -> AwsKeys:
        """JSON with access_key_id and secret_access_key (optionally session_token), or the `Credentials` object that
        `aws sts get-session-token` prints."""
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("Credentials"), dict):
            data = data["Credentials"]
        if isinstance(data, dict):
            names = {k.lower().replace("_", ""): v for k, v in data.items() if isinstance(v, str)}
            key_id, secret = names.get("accesskeyid"), names.get("secretaccesskey")
            if key_id and secret:
                return cls(key_id, secret, names.get("sessiontoken", ""))
        raise ValueError('AWS keys must be JSON like {"access_key_id": "AKIA...", "secret_access_key": "...", '
                         '"session_token": "... (only for temporary keys)"}')

    def values(self) -> list[str]:
        """The strings to keep from the agent (the key id too: it names the account's key)."""
        return [v for v in (self.access_key_id, self.secret_access_key, self.session_token) if v]


@dataclass(frozen=True)
class AgentSignature:
    """What the agent's SDK signed: the region and service of its credential scope and the headers it covered."""

    region: str
    service: str
    signed_headers: tuple[str, ...]


def agent_signature(headers: dict[str, str], query: str) -> AgentSignature:
    """Read the scope from the agent's Authorization header; a request not signed that way cannot be re-signed."""
    if "X-Amz-Signature=" in query or "X-Amz-Credential=" in query:
        raise SigningError("presigned URLs are not re-signed: let the SDK send the request itself, signed with the "
                           "placeholder keys, and the proxy signs it with the real ones")
    auth = headers.get("authorization", "")
    match = _AUTH.match(auth)
    if match is None:
        raise SigningError("requests to AWS must be signed by the SDK (AWS4-HMAC-SHA256 with the placeholder keys), so "
                           "the proxy knows the region and service to sign for with the real keys")
    if headers.get("x-amz-content-sha256", "").startswith(CHUNK_SIGNED):
        raise SigningError(f"chunk-signed uploads ({CHUNK_SIGNED}) cannot be re-signed; use an SDK setting that "
                           "sends unsigned or whole-body-hashed payloads (boto3 does by default)")
    return AgentSignature(match.group(3), match.group(4), tuple(match.group(5).split(";")))


_S3_HOST = re.compile(r"(?:.+\.)?s3(?:[.-](?P<region>[a-z]{2}(?:-gov)?-[a-z]+-\d))?\.amazonaws\.com")
_SERVICE_HOST = re.compile(r"(?P<service>[a-z0-9-]+)\.(?P<region>[a-z]{2}(?:-gov)?-[a-z]+-\d)\.amazonaws\.com")


def host_signature(host: str) -> AgentSignature | None:
    """The region and service an AWS endpoint name implies (for requests goex-proxy itself sends, unsigned)."""
    if m := _S3_HOST.fullmatch(host):
        return AgentSignature(m.group("region") or "us-east-1", "s3", ("host",))
    if m := _SERVICE_HOST.fullmatch(host):
        return AgentSignature(m.group("region"), m.group("service"), ("host",))
    return None


def resign(method: str, url: str, headers: list[tuple[str, str]], body: bytes, keys: AwsKeys,
           signed: AgentSignature) -> list[tuple[str, str]]:
    """The request's headers, signed with `keys` for the agent's region and service, covering the headers it did."""
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    declared = next((v for k, v in headers if k.lower() == "x-amz-content-sha256"), "")
    keep = [(k, v) for k, v in headers if k.lower() not in REPLACED]
    payload = declared if declared in UNHASHED_PAYLOADS else hashlib.sha256(body).hexdigest()
    cover = set(signed.signed_headers) | {"host", "x-amz-date", "x-amz-content-sha256"}
    if keys.session_token:
        cover.add("x-amz-security-token")
    base = S3SigV4Auth if signed.service in ("s3", "s3-object-lambda") else SigV4Auth

    class Signer(base):  # type: ignore[misc, valid-type]
        def payload(self, request: Any) -> str:
            return payload

        def headers_to_sign(self, request: Any) -> Any:
            chosen = super().headers_to_sign(request)
            for name in list(chosen.keys()):
                if name not in cover:
                    del chosen[name]
            return chosen

    request = AWSRequest(method=method, url=url, data=body)
    for k, v in keep:
        request.headers[k] = v  # HTTPHeaders keeps repeats of a name, as the agent sent them
    if declared or base is S3SigV4Auth:
        request.headers["X-Amz-Content-SHA256"] = payload
    creds = Credentials(keys.access_key_id, keys.secret_access_key, keys.session_token or None)
    Signer(creds, signed.service, signed.region).add_auth(request)
    return [(k, v) for k, v in request.headers.items()]
