"""SigV4 re-signing: what an SDK signed with placeholder keys verifies with the real keys after `resign`."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from goex_proxy.credentials.sigv4 import AwsKeys, SigningError, agent_signature, resign

PLACEHOLDER = Credentials("goex-placeholder-aws", "goex-placeholder-aws", "goex-placeholder-aws")
REAL = AwsKeys("AKIAREALKEY000000001", "real/secret+key", "real-session-token")
_AUTH = re.compile(r"Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, SignedHeaders=([^,]+), Signature=(\w+)")


def sdk_request(service: str, method: str, url: str, body: bytes, headers: dict[str, str]) -> AWSRequest:
    """A request as an SDK holding the placeholder keys would send it (with the Host header its HTTP client adds)."""
    request = AWSRequest(method=method, url=url, data=body, headers={"Host": urlsplit(url).netloc, **headers})
    (S3SigV4Auth if service == "s3" else SigV4Auth)(PLACEHOLDER, service, "eu-west-1").add_auth(request)
    return request


def verifies_with_real_keys(method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> bool:
    fields = {k.lower(): v for k, v in headers}
    auth = _AUTH.search(fields["authorization"])
    assert auth is not None and auth.group(1) == REAL.access_key_id
    request = AWSRequest(method=method, url=url, data=body)
    for name in auth.group(5).split(";"):
        request.headers[name] = fields[name]
    request.context["timestamp"] = fields["x-amz-date"]
    signer = (S3SigV4Auth if auth.group(4) == "s3" else SigV4Auth)(
        Credentials(REAL.access_key_id, REAL.secret_access_key, REAL.session_token), auth.group(4), auth.group(3))
    return bool(signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
                == auth.group(6))


@pytest.mark.parametrize(("service", "method", "url", "body", "headers"), [
    ("s3", "PUT", "https://b.s3.eu-west-1.amazonaws.com/a%20dir/k%2Bey.txt?x-id=PutObject", b"data",
     {"Content-Type": "text/plain", "X-Amz-Meta-Note": "  spaced   value "}),
    ("s3", "GET", "https://s3.eu-west-1.amazonaws.com/b?list-type=2&prefix=a%2Fb&encoding-type=url", b"", {}),
    ("dynamodb", "POST", "https://dynamodb.eu-west-1.amazonaws.com/", json.dumps({"TableName": "t"}).encode(),
     {"X-Amz-Target": "DynamoDB_20120810.GetItem", "Content-Type": "application/x-amz-json-1.0"}),
    ("sqs", "POST", "https://sqs.eu-west-1.amazonaws.com/123/queue%2Fname", b"Action=SendMessage&MessageBody=hi",
     {"Content-Type": "application/x-www-form-urlencoded"}),
])
def test_resigned_requests_verify_with_the_real_keys(service: str, method: str, url: str, body: bytes,
                                                     headers: dict[str, str]) -> None:
    request = sdk_request(service, method, url, body, headers)
    fields = list(request.headers.items())
    signed = agent_signature({k.lower(): v for k, v in fields}, url.partition("?")[2])
    assert (signed.region, signed.service) == ("eu-west-1", service)
    out = resign(method, url, fields, body, REAL, signed)
    assert verifies_with_real_keys(method, url, out, body)
    names = {k.lower(): v for k, v in out}
    assert names["x-amz-security-token"] == REAL.session_token
    assert all("goex-placeholder" not in v for v in names.values())
    for k, v in headers.items():
        assert names[k.lower()] == v  # the agent's own headers go through unchanged


def test_a_changed_body_does_not_verify() -> None:
    """The re-signature covers the body as forwarded: it proves what reached the upstream."""
    url = "https://dynamodb.eu-west-1.amazonaws.com/"
    request = sdk_request("dynamodb", "POST", url, b'{"a": 1}', {"X-Amz-Target": "DynamoDB_20120810.GetItem"})
    fields = list(request.headers.items())
    out = resign("POST", url, fields, b'{"a": 1}', REAL, agent_signature({k.lower(): v for k, v in fields}, ""))
    assert not verifies_with_real_keys("POST", url, out, b'{"a": 2}')


@pytest.mark.parametrize(("headers", "query", "message"), [
    ({}, "", "must be signed by the SDK"),
    ({"authorization": "Bearer abc"}, "", "must be signed by the SDK"),
    ({}, "X-Amz-Credential=a%2Fb&X-Amz-Signature=00", "presigned URLs are not re-signed"),
    ({"authorization": "AWS4-HMAC-SHA256 Credential=k/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, "
                       "Signature=00", "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}, "",
     "chunk-signed uploads"),
])
def test_requests_that_cannot_be_resigned_say_why(headers: dict[str, str], query: str, message: str) -> None:
    with pytest.raises(SigningError, match=message):
        agent_signature(headers, query)


def test_aws_keys_are_read_from_json_or_sts_output_and_errors_do_not_echo_the_input() -> None:
    assert AwsKeys.loads('{"access_key_id": "AKIA1", "secret_access_key": "s"}') == AwsKeys("AKIA1", "s", "")
    sts = {"Credentials": {"AccessKeyId": "ASIA1", "SecretAccessKey": "s", "SessionToken": "t", "Expiration": "x"}}
    assert AwsKeys.loads(json.dumps(sts)) == AwsKeys("ASIA1", "s", "t")
    process = {"Version": 1, "AccessKeyId": "AKIA2", "SecretAccessKey": "s2"}  # aws configure export-credentials
    assert AwsKeys.loads(json.dumps(process)) == AwsKeys("AKIA2", "s2", "")
    with pytest.raises(ValueError) as err:
        AwsKeys.loads("AKIA-secret-pasted-raw")
    assert "AKIA-secret-pasted-raw" not in str(err.value)


@pytest.mark.parametrize(("host", "region", "service"), [
    ("bucket.s3.amazonaws.com", "us-east-1", "s3"), ("s3.eu-west-1.amazonaws.com", "eu-west-1", "s3"),
    ("b.s3-us-west-2.amazonaws.com", "us-west-2", "s3"), ("dynamodb.us-east-1.amazonaws.com", "us-east-1", "dynamodb"),
])
def test_endpoint_names_imply_region_and_service(host: str, region: str, service: str) -> None:
    from goex_proxy.credentials.sigv4 import host_signature

    signed = host_signature(host)
    assert signed is not None and (signed.region, signed.service) == (region, service)
    assert host_signature("example.com") is None
