"""`goex-proxy undo` of S3 sub-resource changes (moto_server): an object's tag set, a bucket policy (JSON) and a CORS
configuration (XML, which S3 re-serialises). One the resource had is put back from the pre-image with a Content-MD5,
one it did not have is deleted again, and one someone changed after the agent is left as they made it (exit 3)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import GoexProxy, after_agent

pytestmark = pytest.mark.e2e

HAD = "goex-config-had"      # had tags, a policy and CORS before the agent changed them
NONE = "goex-config-none"    # had none of them before the agent set them

POLICY = {"s3": """
    version: 1
    rules:
      - name: path-style buckets
        allow: {host: s3.amazonaws.com, methods: [GET, HEAD, PUT, DELETE]}
"""}


def policy(bucket: str, action: str) -> str:
    """An allow-only policy (moto enforces a Deny, which would refuse the proxy's reads too)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": action, "Resource": f"arn:aws:s3:::{bucket}/*"}]})


def cors(origin: str, *methods: str) -> dict[str, Any]:
    return {"CORSRules": [{"AllowedOrigins": [origin], "AllowedMethods": list(methods), "MaxAgeSeconds": 300}]}


AGENT = f"""
import json
import boto3
from botocore.config import Config
s3 = boto3.client("s3", region_name="us-east-1", config=Config(s3={{"addressing_style": "path"}}))
for bucket in ("{HAD}", "{NONE}"):
    s3.put_object_tagging(Bucket=bucket, Key="o.txt", Tagging={{"TagSet": [{{"Key": "stage", "Value": "agent"}},
                                                                         {{"Key": "by", "Value": "bot"}}]}})
    s3.put_bucket_policy(Bucket=bucket, Policy={policy("BUCKET", "s3:GetObjectVersion")!r}.replace("BUCKET", bucket))
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={cors("https://agent.example", "GET", "PUT")!r})
"""


@pytest.fixture
def direct(moto: int) -> Any:
    """A person's client, straight to S3 (moto)."""
    import boto3

    client = boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{moto}",
                          aws_access_key_id="third", aws_secret_access_key="party")
    for bucket in (HAD, NONE):
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="o.txt", Body=b"object")
    client.put_object_tagging(Bucket=HAD, Key="o.txt", Tagging={"TagSet": [{"Key": "owner", "Value": "ops"}]})
    client.put_bucket_policy(Bucket=HAD, Policy=policy(HAD, "s3:GetObject"))
    client.put_bucket_cors(Bucket=HAD, CORSConfiguration=cors("https://before.example", "GET"))
    return client


@pytest.fixture
def proxy(aws_proxy, direct: Any) -> GoexProxy:
    return after_agent(aws_proxy, POLICY, AGENT)


def state(client: Any, bucket: str) -> dict[str, Any]:
    """The three configurations as S3 has them now (None: the bucket has none)."""
    tags = client.get_object_tagging(Bucket=bucket, Key="o.txt")["TagSet"]
    try:
        pol = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
    except client.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchBucketPolicy", exc.response
        pol = None
    try:
        rules = client.get_bucket_cors(Bucket=bucket)["CORSRules"]
    except client.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchCORSConfiguration", exc.response
        rules = None
    return {"tags": sorted((t["Key"], t["Value"]) for t in tags), "policy": pol, "cors": rules}


def rows(proxy: GoexProxy, bucket: str) -> dict[str, dict[str, Any]]:
    """The agent's three rows on this bucket, by sub-resource."""
    found = {}
    for r in proxy.rows():
        if r["method"] != "PUT" or r["undo_of"] or not str(r["path"]).startswith(f"/{bucket}"):
            continue
        for sub in ("tagging", "policy", "cors"):
            if sub in json.dumps(r.get("query")) or f"?{sub}" in str(r["path"]):
                found[sub] = r
    assert sorted(found) == ["cors", "policy", "tagging"], [(r["path"], r.get("query")) for r in proxy.rows()]
    return found


def undo(proxy: GoexProxy, row: dict[str, Any]) -> Any:
    return proxy.cli("undo", str(row["id"]), "--yes")


def test_a_changed_configuration_is_put_back_as_it_was(proxy, direct):
    before = {"tags": [("owner", "ops")], "policy": json.loads(policy(HAD, "s3:GetObject")),
              "cors": [{"AllowedOrigins": ["https://before.example"], "AllowedMethods": ["GET"], "MaxAgeSeconds": 300}]}
    assert state(direct, HAD) != before    # the agent changed all three
    found = rows(proxy, HAD)
    assert {k: r["undo_class"] for k, r in found.items()} == dict.fromkeys(found, "needs-preimage")
    plan = json.loads(proxy.cli("undo", str(found["cors"]["id"]), "--dry-run", "--json").stdout)
    assert plan["rule"] == "s3/change a bucket's configuration"
    assert [(s["method"], s["url"]) for s in plan["steps"]] == [("PUT", f"https://s3.amazonaws.com/{HAD}?cors")]
    for name, r in found.items():
        done = undo(proxy, r)
        assert done.returncode == 0, (name, done.stdout + done.stderr)
    assert state(direct, HAD) == before


def test_a_configuration_the_resource_did_not_have_is_deleted(proxy, direct):
    found = rows(proxy, NONE)
    assert {k: r["undo_class"] for k, r in found.items()} == dict.fromkeys(found, "exact")
    for name, r in found.items():
        done = undo(proxy, r)
        assert done.returncode == 0, (name, done.stdout + done.stderr)
    assert state(direct, NONE) == {"tags": [], "policy": None, "cors": None}


def test_a_change_made_after_the_agent_is_kept(proxy, direct):
    direct.put_object_tagging(Bucket=HAD, Key="o.txt", Tagging={"TagSet": [{"Key": "stage", "Value": "person"},
                                                                           {"Key": "by", "Value": "bot"}]})
    direct.put_bucket_policy(Bucket=HAD, Policy=policy(HAD, "s3:GetObjectAcl"))
    direct.put_bucket_cors(Bucket=HAD, CORSConfiguration=cors("https://agent.example", "GET", "PUT", "DELETE"))
    persons = state(direct, HAD)
    for name, r in rows(proxy, HAD).items():
        done = undo(proxy, r)
        assert done.returncode == 3 and "conflict" in done.stderr, (name, done.stdout + done.stderr)
    assert state(direct, HAD) == persons
