"""`goex-proxy undo` of S3 bucket requests (moto_server), path-style (`s3.amazonaws.com/BUCKET`) and virtual-hosted
(`BUCKET.s3.amazonaws.com/`): a created bucket is deleted only if it was new and is still empty; a bucket that
already existed is not the agent's to delete; a deleted bucket is created again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import GoexProxy, after_agent
from tests.fake_aws import BUCKET, NEW_BUCKET

pytestmark = pytest.mark.e2e

PATH_BUCKET = "goex-path-bucket"     # created by the agent, path-style
GONE_BUCKET = "goex-gone-bucket"     # there before, empty; the agent deletes it, path-style

POLICY = {"s3": f"""
    version: 1
    rules:
      - name: buckets in both styles
        allow: {{hosts: [s3.amazonaws.com, {NEW_BUCKET}.s3.amazonaws.com], methods: [GET, HEAD, PUT, DELETE]}}
"""}

AGENT = f"""
import boto3
from botocore.config import Config
path = boto3.client("s3", region_name="us-east-1", config=Config(s3={{"addressing_style": "path"}}))
virtual = boto3.client("s3", region_name="us-east-1", config=Config(s3={{"addressing_style": "virtual"}}))
path.create_bucket(Bucket="{PATH_BUCKET}")                                      # PUT s3.amazonaws.com/BUCKET
path.put_object(Bucket="{PATH_BUCKET}", Key="agent.txt", Body=b"agent's")     # PUT s3.amazonaws.com/BUCKET/KEY
virtual.create_bucket(Bucket="{NEW_BUCKET}")                                    # PUT BUCKET.s3.amazonaws.com/
path.create_bucket(Bucket="{BUCKET}")        # it exists already: us-east-1 answers 200 all the same
path.delete_bucket(Bucket="{GONE_BUCKET}")                                      # DELETE s3.amazonaws.com/BUCKET
"""


@pytest.fixture
def direct(moto: int) -> Any:
    """Someone else's client, straight to S3 (moto)."""
    import boto3

    client = boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{moto}",
                          aws_access_key_id="third", aws_secret_access_key="party")
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="keep.txt", Body=b"someone's")
    client.create_bucket(Bucket=GONE_BUCKET)
    return client


@pytest.fixture
def proxy(aws_proxy, direct: Any) -> GoexProxy:
    return after_agent(aws_proxy, POLICY, AGENT)


def row(proxy: GoexProxy, method: str, host: str, path: str) -> dict[str, Any]:
    return next(r for r in proxy.rows() if r["method"] == method and r["host"] == host and r["path"] == path
                and not r["undo_of"])


def rows(proxy: GoexProxy) -> dict[str, dict[str, Any]]:
    return {"create path": row(proxy, "PUT", "s3.amazonaws.com", f"/{PATH_BUCKET}"),
            "put object": row(proxy, "PUT", "s3.amazonaws.com", f"/{PATH_BUCKET}/agent.txt"),
            "create virtual": row(proxy, "PUT", f"{NEW_BUCKET}.s3.amazonaws.com", "/"),
            "create existing": row(proxy, "PUT", "s3.amazonaws.com", f"/{BUCKET}"),
            "delete": row(proxy, "DELETE", "s3.amazonaws.com", f"/{GONE_BUCKET}")}


def exists(client: Any, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
    except client.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "404", exc.response
        return False
    return True


def keys(client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_bucket_requests_are_classed_as_buckets_in_both_styles(proxy, direct):
    """A path-style PUT /BUCKET is a bucket creation, not an object put under a new key."""
    found = rows(proxy)
    assert {k: r["undo_class"] for k, r in found.items()} == {
        "create path": "exact", "put object": "exact", "create virtual": "exact",
        "create existing": "irreversible: the bucket existed before the agent's request (S3 in us-east-1 answers 200 "
                           "to creating a bucket you own, and resets its ACLs, which undo cannot put back); the bucket "
                           "is not the agent's to delete",
        "delete": "lossy"}
    assert found["create path"]["pre_status"] == 404 and found["create existing"]["pre_status"] == 200
    assert "exact" in proxy.cli("log").stdout

    plan = json.loads(proxy.cli("undo", str(found["create path"]["id"]), "--dry-run", "--json").stdout)
    assert plan["rule"] == "s3/create bucket" and plan["guard"] == \
        f"GET https://s3.amazonaws.com/{PATH_BUCKET}?list-type=2&max-keys=1"
    assert [(s["method"], s["url"]) for s in plan["steps"]] == [("DELETE", f"https://s3.amazonaws.com/{PATH_BUCKET}")]
    put = json.loads(proxy.cli("undo", str(found["put object"]["id"]), "--dry-run", "--json").stdout)
    assert put["rule"] == "s3/put object under a new key, unversioned bucket"


def test_undo_deletes_the_buckets_the_agent_created_and_only_those(proxy, direct):
    found = rows(proxy)
    for name in ("put object", "create path", "create virtual"):    # its object first, then the bucket
        r = proxy.cli("undo", str(found[name]["id"]), "--yes")
        assert r.returncode == 0, r.stdout + r.stderr
    assert not exists(direct, PATH_BUCKET) and not exists(direct, NEW_BUCKET)

    kept = proxy.cli("undo", str(found["create existing"]["id"]), "--yes")
    assert kept.returncode == 2 and "existed before the agent's request" in kept.stderr, kept.stderr
    assert exists(direct, BUCKET) and keys(direct, BUCKET) == ["keep.txt"]


def test_a_bucket_someone_else_put_an_object_in_is_not_deleted(proxy, direct):
    found = rows(proxy)
    direct.put_object(Bucket=PATH_BUCKET, Key="theirs.txt", Body=b"third party's")
    assert proxy.cli("undo", str(found["put object"]["id"]), "--yes").returncode == 0   # the agent's own object
    r = proxy.cli("undo", str(found["create path"]["id"]), "--yes")
    assert r.returncode == 3 and "conflict: objects were put in the bucket after the agent created it" in r.stderr, \
        r.stderr
    assert keys(direct, PATH_BUCKET) == ["theirs.txt"]
    assert not [x for x in proxy.rows() if x["undo_of"] == found["create path"]["id"] and x["method"] == "DELETE"]

    forced = proxy.cli("undo", str(found["create path"]["id"]), "--yes", "--force")    # S3 itself refuses (409)
    assert forced.returncode == 3 and "the upstream refused the conditional request (409)" in forced.stderr
    assert keys(direct, PATH_BUCKET) == ["theirs.txt"]


def test_a_deleted_bucket_is_created_again(proxy, direct):
    deleted = rows(proxy)["delete"]
    assert not exists(direct, GONE_BUCKET)
    plan = json.loads(proxy.cli("undo", str(deleted["id"]), "--dry-run", "--json").stdout)
    assert plan["rule"] == "s3/delete bucket" and [(s["method"], s["url"]) for s in plan["steps"]] == \
        [("PUT", f"https://s3.amazonaws.com/{GONE_BUCKET}")]    # not an object, put back from the bucket's listing
    r = proxy.cli("undo", str(deleted["id"]), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert exists(direct, GONE_BUCKET) and keys(direct, GONE_BUCKET) == []


def test_a_session_undo_takes_objects_back_before_their_bucket(proxy, direct):
    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "session of mailbot: 4 undone" in r.stdout and "existed before the agent's request" in r.stdout
    assert not exists(direct, PATH_BUCKET) and not exists(direct, NEW_BUCKET)
    assert exists(direct, GONE_BUCKET) and keys(direct, BUCKET) == ["keep.txt"]
