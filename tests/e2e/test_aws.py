"""AWS SigV4 re-signing: boto3 with placeholder keys through `goex-proxy exec`, moto_server behind a verifying relay."""

from __future__ import annotations

import json
import sys

import pytest

from tests.fake_aws import AWS_CREDENTIAL as CREDENTIAL
from tests.fake_aws import AWS_HOSTS, BUCKET, REAL, RelayServer

pytestmark = pytest.mark.e2e



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

@pytest.fixture
def proxy(make_proxy, aws_relay: RelayServer):
    p = make_proxy(POLICY, start=False, routes={h: aws_relay.url for h in AWS_HOSTS}, extra_config=CREDENTIAL)
    stored = p.run_cli("secrets", "set", "--config", str(p.config), "aws-keys", input=json.dumps(REAL).encode())
    assert stored.returncode == 0, stored.stderr
    return p.start()


def test_boto3_with_placeholder_keys_is_resigned_with_the_real_ones(proxy, aws_relay):
    """S3 put/get/list/delete and DynamoDB work; every request AWS saw was validly signed with the real keys."""
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["env_key"] == "goex-placeholder-aws"
    assert out["got"] == "hello from the agent" and out["listed"] == ["notes/hello.txt"]
    assert out["after_delete"] == 0 and out["item"] == "hi"
    assert "NoSuchKey" in out["missing"]

    verdicts = aws_relay.verdicts
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


def test_requests_it_cannot_resign_are_denied(proxy, aws_relay):
    """Unsigned and presigned requests to a SigV4-bound host are denied with the reason, and never reach AWS."""
    r = proxy.exec("mailbot", sys.executable, "-c", UNSIGNED)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["unsigned"][0] == 403 and "must be signed by the SDK" in out["unsigned"][1]
    assert out["presigned"][0] == 403 and "presigned URLs are not re-signed" in out["presigned"][1]
    assert aws_relay.verdicts == []


def test_secrets_set_rejects_keys_that_are_not_aws_keys(make_proxy, aws_relay):
    p = make_proxy(POLICY, start=False, extra_config=CREDENTIAL)
    r = p.run_cli("secrets", "set", "--config", str(p.config), "aws-keys", input=b"AKIA-and-not-json-at-all")
    assert r.returncode == 2 and "AWS keys must be JSON" in r.stderr
    assert "AKIA-and-not-json-at-all" not in r.stderr + r.stdout
