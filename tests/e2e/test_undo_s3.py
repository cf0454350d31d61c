"""`goex-proxy undo` on S3 (versioned bucket) against moto_server, through the pipeline and the SigV4 re-signing."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from tests.conftest import GoexProxy, after_agent
from tests.fake_aws import AWS_CREDENTIAL, BUCKET, REAL

pytestmark = pytest.mark.e2e

POLICY = {"s3": """
    version: 1
    rules:
      - name: the test bucket
        allow: {host: goex-test-bucket.s3.amazonaws.com, methods: [GET, HEAD, PUT, DELETE]}
"""}

AGENT = f"""
import boto3
s3 = boto3.client("s3", region_name="us-east-1")
s3.put_object(Bucket="{BUCKET}", Key="a.txt", Body=b"agent's a")       # over an existing object
s3.put_object(Bucket="{BUCKET}", Key="b.txt", Body=b"agent's new b")   # a new key
s3.delete_object(Bucket="{BUCKET}", Key="c.txt")                        # leaves a delete marker
s3.put_object(Bucket="{BUCKET}", Key="d.txt", Body=b"agent's d")       # someone writes after this one
"""


@pytest.fixture
def direct(moto: int) -> Any:
    """A third party writing to the same bucket, straight to S3 (moto), not through the proxy."""
    import boto3

    client = boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{moto}",
                          aws_access_key_id="third", aws_secret_access_key="party")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for key in ("a.txt", "c.txt", "d.txt"):
        client.put_object(Bucket=BUCKET, Key=key, Body=f"original {key}".encode())
    return client


@pytest.fixture
def proxy(aws_proxy, direct: Any) -> GoexProxy:
    return after_agent(aws_proxy, POLICY, AGENT)


def content(client: Any, key: str) -> str | None:
    try:
        return str(client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode())
    except client.exceptions.NoSuchKey:
        return None


def row_id(proxy: GoexProxy, method: str, key: str) -> str:
    return next(str(r["id"]) for r in proxy.rows() if r["method"] == method and str(r["path"]).startswith(f"/{key}")
                and not r["undo_of"])


def test_each_write_is_undone_exactly(proxy, direct, aws_relay):
    """Put over an existing object, put of a new key, delete: each undone, whether or not `run` is running."""
    rows = {r["id"]: r for r in proxy.rows()}
    put_a, put_b, delete_c = row_id(proxy, "PUT", "a.txt"), row_id(proxy, "PUT", "b.txt"), row_id(proxy, "DELETE", "c.txt")
    assert rows[put_a]["undo_class"] == "exact" and rows[delete_c]["undo_class"] == "exact"
    assert "exact" in proxy.cli("log").stdout

    plan = json.loads(proxy.cli("undo", put_a, "--dry-run", "--json").stdout)
    assert plan["verdict"] == "plan" and plan["steps"][0]["method"] == "DELETE" and "versionId=" in plan["steps"][0]["url"]
    assert content(direct, "a.txt") == "agent's a", "a dry run changes nothing"

    r = proxy.cli("undo", put_a, "--yes")                   # with `goex-proxy run` running
    assert r.returncode == 0, r.stderr
    assert content(direct, "a.txt") == "original a.txt"
    proxy.stop()
    for request_id in (put_b, delete_c):                    # and without it
        r = proxy.cli("undo", request_id, "--yes")
        assert r.returncode == 0, r.stderr
    assert content(direct, "b.txt") is None
    assert content(direct, "c.txt") == "original c.txt"

    # Every compensation was audited, linked to what it undoes, and signed with the real keys at "AWS".
    compensations = [r for r in proxy.rows() if r["undo_of"]]
    assert {r["undo_of"] for r in compensations} == {put_a, put_b, delete_c}
    assert all(r["agent"] == "mailbot" and r["credential"] == "aws" for r in compensations)
    assert all(v.valid and v.key_id == REAL["access_key_id"] for v in aws_relay.verdicts)
    assert proxy.cli("log", "verify").returncode == 0, "two writers kept one hash chain"

    again = proxy.cli("undo", put_a, "--yes")
    assert again.returncode == 1 and "already undone" in again.stderr
    # The undo journal is not chained; the audit log is. With the journal's entries deleted, the chained row of the
    # compensation still says it was undone: nothing is sent again unless a person forces it.
    with sqlite3.connect(proxy.home / "audit.db") as conn:
        conn.execute("DELETE FROM undo_journal WHERE request_id = ?", (put_a,))
    sent = len(proxy.rows())
    again = proxy.cli("undo", put_a, "--yes")
    assert again.returncode != 0 and "undo journal does not list" in again.stderr, again.stderr
    assert next(str(r["id"]) for r in compensations if r["undo_of"] == put_a and r["method"] == "DELETE") in again.stderr
    assert len(proxy.rows()) == sent and content(direct, "a.txt") == "original a.txt"
    undo_of_undo = proxy.cli("undo", str(compensations[0]["id"]), "--yes")
    assert undo_of_undo.returncode != 0 and "needs --force" in undo_of_undo.stderr


def test_a_later_write_by_someone_else_is_a_conflict(proxy, direct):
    """Someone wrote the object after the agent: undo refuses, and their object is intact."""
    put_d = row_id(proxy, "PUT", "d.txt")
    direct.put_object(Bucket=BUCKET, Key="d.txt", Body=b"third party's d")
    r = proxy.cli("undo", put_d, "--yes")
    assert r.returncode == 3 and "conflict" in r.stderr and "written again after the agent" in r.stderr
    assert content(direct, "d.txt") == "third party's d"
    assert not [row for row in proxy.rows() if row["undo_of"] == put_d and row["method"] == "DELETE"]


def test_undo_asks_before_it_acts(proxy, direct):
    put_a = row_id(proxy, "PUT", "a.txt")
    r = proxy.cli("undo", put_a)  # no terminal, no --yes
    assert r.returncode == 2 and "pass --yes" in r.stderr
    assert content(direct, "a.txt") == "agent's a"


def test_a_whole_session_is_undone_newest_first(proxy, direct):
    """`undo --agent A --since 1h`: every write of the session taken back, the latest first."""
    dry = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--dry-run", "--json")
    plans = [json.loads(line) for line in dry.stdout.splitlines()]
    assert [p["verdict"] for p in plans] == ["plan"] * 4
    assert [p["steps"][0]["url"].split("/")[-1].split("?")[0] for p in plans] == ["d.txt", "c.txt", "b.txt", "a.txt"]
    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stderr
    assert "session of mailbot: 4 undone" in r.stdout
    assert [content(direct, k) for k in ("a.txt", "b.txt", "c.txt", "d.txt")] == \
        ["original a.txt", None, "original c.txt", "original d.txt"]
    again = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert again.returncode == 1 and "already undone" in again.stderr


def test_a_session_undo_stops_at_the_first_conflict_and_says_what_is_left(proxy, direct):
    direct.put_object(Bucket=BUCKET, Key="d.txt", Body=b"third party's d")  # the newest agent write, overwritten
    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 3 and "conflict" in r.stderr
    assert "session of mailbot: 0 undone" in r.stdout and r.stderr.count("not undone (not attempted)") == 3
    assert [content(direct, k) for k in ("a.txt", "b.txt", "c.txt", "d.txt")] == \
        ["agent's a", "agent's new b", None, "third party's d"]


def test_without_the_aws_credential_undo_says_the_read_was_refused_and_changes_nothing(proxy, direct, aws_relay):
    """The credential was taken out of the config: the guard's read goes unsigned and S3 refuses it (403). That is
    not someone writing the object again: undo says the read was refused, and that it needs the credential."""
    put_a, delete_c = row_id(proxy, "PUT", "a.txt"), row_id(proxy, "DELETE", "c.txt")
    proxy.stop()
    proxy.config.write_text(proxy.config.read_text().replace(AWS_CREDENTIAL, ""))

    r = proxy.cli("undo", put_a, "--yes")
    assert r.returncode == 4, r.stdout + r.stderr
    assert f"HEAD https://{BUCKET}.s3.amazonaws.com/a.txt was refused by the upstream (403)" in r.stderr, r.stderr
    assert f"no credential is configured for {BUCKET}.s3.amazonaws.com" in r.stderr
    assert "sent with credential 'aws'" in r.stderr and "needs that credential" in r.stderr
    assert "written again" not in r.stderr and "conflict" not in r.stderr

    # A plan with no guard (a delete marker's removal) sends nothing unsigned at all.
    unsigned = len(aws_relay.verdicts)
    r = proxy.cli("undo", delete_c, "--yes")
    assert r.returncode == 4 and "it was not sent" in r.stderr and f"configured for {BUCKET}" in r.stderr, r.stderr
    assert len(aws_relay.verdicts) == unsigned

    assert content(direct, "a.txt") == "agent's a" and content(direct, "c.txt") is None
    assert not [row for row in proxy.rows() if row["undo_of"] and row["method"] != "HEAD"]
