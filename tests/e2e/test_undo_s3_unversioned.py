"""`goex-proxy undo` on an unversioned S3 bucket (moto_server): the pre-image read before each write is the way back,
and If-Match / If-None-Match let S3 refuse a compensation that would overwrite someone else's write."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tests.conftest import GoexProxy
from tests.fake_aws import PLAIN_BUCKET

pytestmark = pytest.mark.e2e

POLICY = {"s3": f"""
    version: 1
    rules:
      - name: the plain bucket
        allow: {{host: {PLAIN_BUCKET}.s3.amazonaws.com, methods: [GET, HEAD, PUT, DELETE]}}
"""}
KEEP = 4096   # audit.max_body_bytes: the most of a pre-image the log keeps

AGENT = f"""
import boto3
s3 = boto3.client("s3", region_name="us-east-1")
s3.put_object(Bucket="{PLAIN_BUCKET}", Key="a.txt", Body=b"agent's a", ContentType="text/x-agent")  # over an object
s3.put_object(Bucket="{PLAIN_BUCKET}", Key="b.txt", Body=b"agent's new b")   # a new key
s3.delete_object(Bucket="{PLAIN_BUCKET}", Key="c.txt")                        # gone for good without the pre-image
s3.put_object(Bucket="{PLAIN_BUCKET}", Key="big.bin", Body=b"y" * 10000)     # over one larger than the log keeps
"""


@pytest.fixture
def direct(moto: int) -> Any:
    """Someone else's client, straight to S3 (moto): sets the bucket up and writes behind the agent's back."""
    import boto3

    client = boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{moto}",
                          aws_access_key_id="third", aws_secret_access_key="party")
    client.create_bucket(Bucket=PLAIN_BUCKET)
    client.put_object(Bucket=PLAIN_BUCKET, Key="a.txt", Body=b"original a", ContentType="text/plain")
    client.put_object(Bucket=PLAIN_BUCKET, Key="c.txt", Body=b"\x00\xffbinary c\x80", ContentType="application/x-c")
    client.put_object(Bucket=PLAIN_BUCKET, Key="big.bin", Body=b"x" * 10000)
    return client


@pytest.fixture
def proxy(aws_proxy, direct: Any) -> GoexProxy:
    p = aws_proxy(POLICY, f"audit:\n  max_body_bytes: {KEEP}\n")
    r = p.exec("mailbot", sys.executable, "-c", AGENT, timeout=120)
    assert r.returncode == 0, r.stderr
    return p


def obj(client: Any, key: str) -> tuple[bytes, str] | None:
    try:
        got = client.get_object(Bucket=PLAIN_BUCKET, Key=key)
    except client.exceptions.NoSuchKey:
        return None
    return got["Body"].read(), got["ContentType"]


def row(proxy: GoexProxy, method: str, key: str) -> dict[str, Any]:
    return next(r for r in proxy.rows() if r["method"] == method and str(r["path"]).startswith(f"/{key}")
                and not r["undo_of"])


def test_put_new_key_and_delete_are_undone_from_the_pre_image(proxy, direct):
    put_a, put_b, delete_c = row(proxy, "PUT", "a.txt"), row(proxy, "PUT", "b.txt"), row(proxy, "DELETE", "c.txt")
    assert [put_a["undo_class"], put_b["undo_class"], delete_c["undo_class"]] == \
        ["lossy", "exact", "needs-preimage"]  # an overwrite: metadata and tags do not come back
    assert put_a["pre_status"] == 200 and put_a["pre_body"] == b"original a"
    assert put_b["pre_status"] == 404 and delete_c["pre_body"] == b"\x00\xffbinary c\x80"

    for r in (put_a, put_b, delete_c):
        done = proxy.cli("undo", str(r["id"]), "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
    assert obj(direct, "a.txt") == (b"original a", "text/plain")
    assert obj(direct, "b.txt") is None
    assert obj(direct, "c.txt") == (b"\x00\xffbinary c\x80", "application/x-c")   # byte for byte

    # Each compensation was conditional: S3 itself would have refused it had the key changed in between.
    sent = {r["undo_of"]: dict(json.loads(r["req_headers"])) for r in proxy.rows() if r["undo_of"] and
            r["method"] != "HEAD"}
    assert sent[put_a["id"]]["If-Match"] == dict(json.loads(put_a["resp_headers"]))["ETag"]
    assert sent[put_b["id"]]["If-Match"] == dict(json.loads(put_b["resp_headers"]))["ETag"]
    assert sent[delete_c["id"]]["If-None-Match"] == "*"


def test_someone_elses_write_after_the_agent_is_not_overwritten(proxy, direct):
    put_a, delete_c = row(proxy, "PUT", "a.txt"), row(proxy, "DELETE", "c.txt")
    direct.put_object(Bucket=PLAIN_BUCKET, Key="a.txt", Body=b"third party's a")
    direct.put_object(Bucket=PLAIN_BUCKET, Key="c.txt", Body=b"third party's c")
    for r in (put_a, delete_c):
        refused = proxy.cli("undo", str(r["id"]), "--yes")
        assert refused.returncode == 3 and "conflict" in refused.stderr, refused.stdout + refused.stderr
    assert obj(direct, "a.txt")[0] == b"third party's a" and obj(direct, "c.txt")[0] == b"third party's c"


def test_a_pre_image_larger_than_the_log_keeps_is_neither_downloaded_whole_nor_used(proxy, direct):
    put_big = row(proxy, "PUT", "big.bin")
    assert put_big["pre_body_size"] == KEEP + 1 and len(put_big["pre_body"]) == KEEP   # stopped reading there
    r = proxy.cli("undo", str(put_big["id"]), "--yes")
    assert r.returncode == 2 and "larger than audit.max_body_bytes" in r.stderr
    assert obj(direct, "big.bin")[0] == b"y" * 10000


COPIER = f"""
import json, boto3
s3 = boto3.client("s3", region_name="us-east-1")
bucket = "{PLAIN_BUCKET}"
s3.copy_object(Bucket=bucket, Key="a.txt", CopySource={{"Bucket": bucket, "Key": "c.txt"}})      # over an object
s3.copy_object(Bucket=bucket, Key="copy.txt", CopySource={{"Bucket": bucket, "Key": "a.txt"}})   # under a new key
s3.put_object_tagging(Bucket=bucket, Key="c.txt", Tagging={{"TagSet": [{{"Key": "by", "Value": "agent"}}]}})
s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({{"Version": "2012-10-17", "Statement": [{{
    "Effect": "Allow", "Principal": {{"AWS": "arn:aws:iam::123456789012:root"}}, "Action": "s3:GetObject",
    "Resource": "arn:aws:s3:::{PLAIN_BUCKET}/*"}}]}}))
upload = s3.create_multipart_upload(Bucket=bucket, Key="mp.bin")["UploadId"]
etag = s3.upload_part(Bucket=bucket, Key="mp.bin", UploadId=upload, PartNumber=1, Body=b"z" * 100)["ETag"]
s3.complete_multipart_upload(Bucket=bucket, Key="mp.bin", UploadId=upload,
                             MultipartUpload={{"Parts": [{{"ETag": etag, "PartNumber": 1}}]}})
"""
ALL_METHODS = {"s3": f"""
    version: 1
    rules:
      - name: the plain bucket
        allow: {{host: {PLAIN_BUCKET}.s3.amazonaws.com, methods: [GET, HEAD, PUT, POST, DELETE]}}
"""}


def test_copies_tags_a_new_policy_and_a_multipart_upload_are_undone(aws_proxy, direct):
    """A copy's ETag is in its XML answer, not a header: undo puts back what the copy replaced, or deletes what it
    made, If-Match that ETag. Tags on an object that had none, and a policy on a bucket that had none, are deleted; a
    completed multipart upload is deleted If-Match its ETag (also in the XML), its start and part are aborted."""
    proxy = aws_proxy(ALL_METHODS)
    r = proxy.exec("mailbot", sys.executable, "-c", COPIER, timeout=120)
    assert r.returncode == 0, r.stderr
    writes = [r for r in proxy.rows() if r["method"] not in ("GET", "HEAD")]
    assert [r["undo_class"] for r in writes] == [
        "lossy", "exact", "exact", "exact", "exact", "lossy", "exact"]
    assert direct.get_object_tagging(Bucket=PLAIN_BUCKET, Key="c.txt")["TagSet"]

    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert obj(direct, "a.txt") == (b"original a", "text/plain")
    assert obj(direct, "copy.txt") is None and obj(direct, "mp.bin") is None
    assert direct.get_object_tagging(Bucket=PLAIN_BUCKET, Key="c.txt")["TagSet"] == []
    with pytest.raises(direct.exceptions.ClientError, match="NoSuchBucketPolicy"):
        direct.get_bucket_policy(Bucket=PLAIN_BUCKET)
    undone = {r["undo_of"]: dict(json.loads(r["req_headers"])) for r in proxy.rows() if r["undo_of"]
              and r["method"] in ("PUT", "DELETE") and "uploadId" not in str(r["url"])}
    assert undone[writes[0]["id"]]["If-Match"] == direct.head_object(Bucket=PLAIN_BUCKET, Key="c.txt")["ETag"]
