"""The undo planner: shipped packs load, rows get their class, plans are rendered from the response's identifiers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from goex_proxy.errors import ConfigError
from goex_proxy.presets import undo_dir as builtin_dir
from goex_proxy.presets import undo_names as builtin_names
from goex_proxy.undo.plan import Exchange, classify, on_origin, plan, preimage_read
from goex_proxy.undo.rules import check_pack_text, load_packs, parse_template

RULES = load_packs([builtin_dir() / f"{name}.yaml" for name in ("s3", "rest")])
BUCKET = "https://photos.s3.amazonaws.com"


def s3(method: str, path: str, status: int, **headers: str) -> Exchange:
    return Exchange(method, BUCKET + path, (), b"", status, tuple(headers.items()), b"")


def test_every_shipped_pack_is_valid() -> None:
    assert {"s3", "rest"} <= set(builtin_names())
    for name in builtin_names():
        path = builtin_dir() / f"{name}.yaml"
        rules, problems = check_pack_text(path.read_text(), str(path))
        assert rules and not [p for p in problems if p.severity == "error"], problems


def test_versioned_put_is_undone_by_deleting_the_agents_version() -> None:
    exchange = s3("PUT", "/cats/tom.jpg", 200, **{"x-amz-version-id": "v2", "ETag": '"abc"'})
    assert classify(RULES, exchange) == "exact"
    p = plan("R1", exchange, RULES)
    assert p.verdict == "plan" and p.rule == "s3/put object, versioned bucket"
    assert [s.describe() for s in p.steps] == [f"DELETE {BUCKET}/cats/tom.jpg?versionId=v2"]
    assert p.guard is not None and p.guard.describe() == f"HEAD {BUCKET}/cats/tom.jpg"
    assert p.guard_expect is not None
    assert p.guard_expect.evaluate({**p.variables, "read": {"status": 200, "headers": {"x-amz-version-id": "v2"}}})
    assert not p.guard_expect.evaluate({**p.variables, "read": {"status": 200, "headers": {"x-amz-version-id": "v3"}}})


def test_delete_on_a_versioned_bucket_removes_the_marker() -> None:
    exchange = s3("DELETE", "/cats/tom.jpg", 204, **{"x-amz-delete-marker": "true", "x-amz-version-id": "m1"})
    p = plan("R2", exchange, RULES)
    assert [s.describe() for s in p.steps] == [f"DELETE {BUCKET}/cats/tom.jpg?versionId=m1"]


@pytest.mark.parametrize(("exchange", "label", "verdict"), [
    (s3("PUT", "/k", 200, ETag='"e"'), "lossy", "not planned"),   # unversioned: needs the old bytes
    (s3("DELETE", "/k?versionId=v1", 204), "irreversible: a deleted object version cannot be brought back",
     "irreversible"),
    (s3("PUT", "/k", 403, **{"x-amz-version-id": "v9"}), "not effective", "not effective"),
    (Exchange("GET", "https://api.example.com/things", status=200), "no rule", "no rule"),
])
def test_rows_say_what_can_be_taken_back(exchange: Exchange, label: str, verdict: str) -> None:
    assert classify(RULES, exchange) == label
    assert plan("R", exchange, RULES).verdict == verdict


def test_rest_create_is_undone_at_its_location_or_id() -> None:
    created = Exchange("POST", "http://localhost:3000/posts", (), b'{"title": "x"}', 201,
                       (("Location", "http://localhost:3000/posts/7"),), json.dumps({"id": 7, "title": "x"}).encode())
    assert [s.describe() for s in plan("R", created, RULES).steps] == ["DELETE http://localhost:3000/posts/7"]
    no_location = Exchange("POST", "http://localhost:3000/posts", (), b"{}", 201, (), b'{"id": "a1"}')
    assert [s.describe() for s in plan("R", no_location, RULES).steps] == ["DELETE http://localhost:3000/posts/a1"]
    action = Exchange("POST", "https://api.example.com/mail/send", (), b"{}", 201, (), b'{"id": 1}')
    assert classify(RULES, action) == "no rule"


def test_a_relative_location_is_resolved_against_the_request() -> None:
    created = Exchange("POST", "http://localhost:3000/posts?x=1", (), b"{}", 201, (("Location", "/posts/9"),), b"{}")
    assert [s.describe() for s in plan("R", created, RULES).steps] == ["DELETE http://localhost:3000/posts/9"]


@pytest.mark.parametrize("location", ["https://evil.example/posts/7", "//evil.example/posts/7",
                                      "https://localhost:3000/posts/7", "http://localhost:3001/posts/7",
                                      "http://localhost.evil.example:3000/posts/7",
                                      "http://user:pass@localhost:3000/posts/7"])
def test_a_compensation_never_leaves_the_original_origin(location: str) -> None:
    """The upstream's answer names where the compensation goes; an answer pointing elsewhere plans nothing, so the
    credential injected on replay cannot be carried to another origin."""
    created = Exchange("POST", "http://localhost:3000/posts", (), b"{}", 201, (("Location", location),), b"{}")
    p = plan("R", created, RULES)
    assert p.verdict == "not planned" and not p.steps
    assert "off the original origin" in p.reason and location.lstrip("/").split("@")[-1] in p.reason


def test_on_origin_compares_scheme_host_and_port() -> None:
    assert on_origin("/things/1", "https://api.example.com/things/1?x") == "https://api.example.com/things/1"
    assert on_origin("https://API.example.com.:443/a", "https://api.example.com/b") == "https://API.example.com.:443/a"
    assert on_origin("https://api.example.com:8443/a", "https://api.example.com/b") is None
    assert on_origin("", "https://api.example.com/b") is None
    assert on_origin("http://api.example.com/a", "https://api.example.com/b") is None

def test_a_rule_that_needs_a_preimage_says_so_when_there_is_none() -> None:
    p = plan("R", s3("PUT", "/k", 200, ETag='"e"'), RULES)
    assert p.verdict == "not planned" and "pre-image" in p.reason


def test_a_failed_pre_image_read_is_named_as_why_there_is_no_plan() -> None:
    failed = Exchange("PUT", BUCKET + "/k", (), b"new", 200, (("ETag", '"e"'),), b"", 0, (), b"connection refused")
    assert classify(RULES, failed) == "lossy"
    p = plan("R", failed, RULES)
    assert p.verdict == "not planned" and "reading it failed: connection refused" in p.reason


@pytest.mark.parametrize(("method", "path", "read"), [
    ("PUT", "/cats/tom.jpg", f"GET {BUCKET}/cats/tom.jpg"),          # an object: read what it replaces
    ("DELETE", "/cats/tom.jpg", f"GET {BUCKET}/cats/tom.jpg"),
    ("PUT", "/", f"HEAD {BUCKET}/"),                                  # creating the bucket: was it there?
    ("PUT", "/big.iso?partNumber=2&uploadId=u1", None),               # a multipart part is not the object
    ("DELETE", "/cats/tom.jpg?versionId=v1", None),                   # irreversible anyway
])
def test_pre_images_are_read_only_where_a_rule_could_use_them(method: str, path: str, read: str | None) -> None:
    step = preimage_read(RULES, Exchange(method, BUCKET + path))
    assert (step.describe() if step else None) == read


PATH_STYLE = "https://s3.amazonaws.com"


def s3_at(method: str, url: str, status: int, pre: int | None, **headers: str) -> Exchange:
    pre_headers = (("x-amz-bucket-region", "eu-west-1"),) if pre == 200 else ()
    return Exchange(method, url, (), b"", status, tuple(headers.items()), b"", pre, pre_headers, b"")


@pytest.mark.parametrize(("url", "delete"), [
    (f"{PATH_STYLE}/photos", f"{PATH_STYLE}/photos"),                         # path-style: the bucket is the path
    (f"{PATH_STYLE}/photos/", f"{PATH_STYLE}/photos/"),
    ("https://s3.eu-west-1.amazonaws.com/photos", "https://s3.eu-west-1.amazonaws.com/photos"),
    (f"{BUCKET}/", f"{BUCKET}/"),                                             # virtual-hosted: the bucket is the host
    ("https://photos.s3.eu-west-1.amazonaws.com/?x-id=CreateBucket",
     "https://photos.s3.eu-west-1.amazonaws.com/"),
])
def test_a_bucket_creation_is_one_in_both_addressing_styles(url: str, delete: str) -> None:
    """`PUT s3.amazonaws.com/BUCKET` is no object put under a new key (which would plan a DELETE with an ETag S3 never
    sent): the bucket is read first, and only one that was not there is deleted."""
    assert [s.describe() for s in [preimage_read(RULES, Exchange("PUT", url))] if s] == [f"HEAD {url.split('?')[0]}"]
    created = s3_at("PUT", url, 200, 404, Location="/photos")
    assert classify(RULES, created) == "exact"
    p = plan("R", created, RULES)
    assert p.rule == "s3/create bucket" and [s.describe() for s in p.steps] == [f"DELETE {delete}"]
    assert p.guard is not None and p.guard.describe() == f"GET {delete}?list-type=2&max-keys=1"
    assert p.guard_expect is not None and p.steps[0].conflict is not None
    assert p.guard_expect.evaluate({**p.variables, "read": {"status": 200, "text": "<KeyCount>0</KeyCount>"}})
    assert not p.guard_expect.evaluate({**p.variables, "read": {"status": 200, "text": "<Contents><Key>x</Key>"}})
    assert p.steps[0].conflict.evaluate({**p.variables, "response": {"status": 409}})   # BucketNotEmpty

    existed = s3_at("PUT", url, 200, 200)   # us-east-1 answers 200 to creating a bucket you own
    assert classify(RULES, existed).startswith("irreversible: the bucket existed before")
    assert plan("R", existed, RULES).verdict == "irreversible"
    assert classify(RULES, s3_at("PUT", url, 409, 200)) == "not effective"   # BucketAlreadyOwnedByYou elsewhere


@pytest.mark.parametrize("url", [f"{PATH_STYLE}/photos/cats/tom.jpg", f"{PATH_STYLE}/photos//tom.jpg",
                                 f"{BUCKET}/cats/tom.jpg", "https://s3.us-west-2.amazonaws.com/photos/k"])
def test_an_object_needs_a_key_in_either_style(url: str) -> None:
    assert [s.describe() for s in [preimage_read(RULES, Exchange("PUT", url))] if s] == [f"GET {url}"]
    new = s3_at("PUT", url, 200, 404, ETag='"e"')
    assert plan("R", new, RULES).rule == "s3/put object under a new key, unversioned bucket"
    versioned = s3_at("PUT", url, 200, None, **{"x-amz-version-id": "v1"})
    assert plan("R", versioned, RULES).rule == "s3/put object, versioned bucket"


def test_a_deleted_bucket_is_created_again_in_its_region() -> None:
    """Not taken for an object delete (whose undo would PUT the bucket's listing back as "the object")."""
    url = f"{PATH_STYLE}/photos"
    assert [s.describe() for s in [preimage_read(RULES, Exchange("DELETE", url))] if s] == [f"HEAD {url}"]
    p = plan("R", s3_at("DELETE", url, 204, 200), RULES)
    assert (p.rule, p.fidelity) == ("s3/delete bucket", "lossy")
    assert [(s.describe(), s.body) for s in p.steps] == [(f"PUT {url}", b'<CreateBucketConfiguration xmlns="http://'
                                                          b's3.amazonaws.com/doc/2006-03-01/"><LocationConstraint>'
                                                          b'eu-west-1</LocationConstraint></CreateBucketConfiguration>')]


@pytest.mark.parametrize(("method", "url", "read", "label"), [
    ("PUT", f"{PATH_STYLE}/photos?versioning", None, "irreversible: the bucket's versioning could not be read"),
    ("PUT", f"{BUCKET}/?versioning", None, "irreversible: the bucket's versioning could not be read"),
    ("PUT", f"{BUCKET}/?tagging", f"GET {BUCKET}/?tagging", "needs-preimage"),
    ("DELETE", f"{PATH_STYLE}/photos?tagging", f"GET {PATH_STYLE}/photos?tagging", "needs-preimage"),
    ("DELETE", f"{BUCKET}/?policy", f"GET {BUCKET}/?policy", "needs-preimage"),
    ("DELETE", f"{BUCKET}/cats/tom.jpg?tagging", f"GET {BUCKET}/cats/tom.jpg?tagging", "needs-preimage"),
    ("PUT", f"{PATH_STYLE}/photos/k?acl", None, "irreversible: S3 expands a canned ACL"),
])
def test_a_sub_resource_is_neither_the_bucket_nor_the_object(method: str, url: str, read: str | None, label: str) -> None:
    """Tagging, versioning, a policy...: each has a rule of its own, which reads the sub-resource (never the bucket's
    listing or the object's bytes) and never takes the request for a bucket or an object (nor may the generic REST
    pack, which would plan to put back JSON S3 never sent)."""
    step = preimage_read(RULES, Exchange(method, url))
    assert (step.describe() if step else None) == read
    tagged = b"<Tagging><TagSet><Tag><Key>team</Key><Value>a</Value></Tag></TagSet></Tagging>"   # what was read
    found = classify(RULES, Exchange(method, url, (), b"", 204 if method == "DELETE" else 200, (), b"", 200, (), tagged))
    assert found.startswith(label), found


def test_an_s3_copy_is_undone_by_the_s3_pack_not_the_rest_pack() -> None:
    """The REST pack would have taken a copy for a PUT over an existing resource, put back from its pre-image as JSON:
    {} over the object. The S3 pack puts back the bytes read before, If-Match the copy's ETag, which S3 gives in the
    answer's XML (quotes escaped), not in a header."""
    copy = Exchange("PUT", BUCKET + "/k", (("x-amz-copy-source", "/photos/src"),), b"", 200, (),
                    b"<CopyObjectResult><ETag>&quot;e1&quot;</ETag></CopyObjectResult>", 200,
                    (("Content-Type", "text/plain"),), b"old bytes")
    assert [s.describe() for s in [preimage_read(RULES, copy)] if s] == [f"GET {BUCKET}/k"]
    p = plan("R", copy, RULES)
    assert (p.rule, p.fidelity) == ("s3/put object over an existing one, unversioned bucket", "lossy")
    assert [(s.method, s.body, dict(s.headers)) for s in p.steps] == [
        ("PUT", b"old bytes", {"If-Match": '"e1"', "Content-Type": "text/plain"})]
    failed = Exchange("PUT", BUCKET + "/k", (("x-amz-copy-source", "/photos/src"),), b"", 200, (),
                      b"<Error><Code>InternalError</Code></Error>", 200, (), b"old bytes")
    assert classify(RULES, failed) == "not effective"      # a copy can fail after answering 200
    elsewhere = Exchange("PUT", "https://api.example.com/things/1", (), b"{}", 200, (), b"{}", 200, (), b'{"a": 1}')
    assert plan("R", elsewhere, RULES).rule == "rest/replace or update a resource"


def test_a_pre_image_read_refused_or_failed_is_named_as_such() -> None:
    """A 403 (the credential may not read it) or a 5xx is no pre-image: the plan says the read was refused."""
    for status, said in ((403, "reading it was refused (403: <Error><Code>AccessDenied</Code></Error>)"),
                         (503, "reading it failed (503")):
        refused = Exchange("PUT", BUCKET + "/k", (), b"new", 200, (("ETag", '"e"'),), b"", status, (),
                           b"<Error><Code>AccessDenied</Code></Error>" if status == 403 else b"")
        assert classify(RULES, refused) == "lossy"
        p = plan("R", refused, RULES)
        assert p.verdict == "not planned" and said in p.reason, p.reason


def test_a_pre_image_cut_at_the_log_limit_is_not_used() -> None:
    cut = Exchange("PUT", BUCKET + "/k", (), b"new", 200, (("ETag", '"e"'),), b"", 200, (), b"x" * 10, 11)
    p = plan("R", cut, RULES)
    assert p.verdict == "not planned" and "larger than audit.max_body_bytes" in p.reason
    whole = Exchange("PUT", BUCKET + "/k", (), b"new", 200, (("ETag", '"e"'),), b"", 200, (), b"x" * 10, 10)
    assert [(s.method, s.body) for s in plan("R", whole, RULES).steps] == [("PUT", b"x" * 10)]


def test_a_row_without_an_outcome_is_not_planned() -> None:
    p = plan("R", Exchange("PUT", BUCKET + "/k"), RULES)
    assert p.verdict == "not planned" and "no recorded outcome" in p.reason


def test_templates_keep_types_and_join_strings() -> None:
    variables = {"response": {"json": {"ids": [1, 2], "ok": True}}}
    assert parse_template("${response.json.ids}").render(variables) == [1, 2]
    assert parse_template("ids=${response.json.ids} ok=${response.json.ok} $${literal}").render(variables) == \
        "ids=[1, 2] ok=true ${literal}"


@pytest.mark.parametrize(("text", "message"), [
    ("version: 1\nrules:\n  - {name: a, match: {hosts: [x.example]}, class: exact}\n", "needs 'undo' steps"),
    ("version: 1\nrules:\n  - {name: a, match: {hosts: [x.example]}, class: irreversible}\n", "say why in 'reason'"),
    ("version: 1\nrules:\n  - {name: a, match: {hosts: [x.example]}, class: maybe, reason: r}\n", "must be one of exact"),
    ("version: 1\nrules:\n  - name: a\n    match: {hosts: [x.example]}\n    class: exact\n    undo:\n"
     "      - {method: DELETE, url: '${reponse.json.id}'}\n", "unknown variable 'reponse'"),
    ("version: 1\nrules:\n  - name: a\n    match: {hosts: [x.example]}\n    class: exact\n    undo:\n"
     "      - {method: DELETE, url: '${response.json.id'}\n", "never closed"),
    ("version: 1\nrules:\n  - name: a\n    match: {hosts: [x.example]}\n    class: exact\n    undo:\n"
     "      - {method: PUT, url: 'https://x.example', body: '${pre.body}', json: {a: 1}}\n", "not several"),
    ("version: 1\nrules:\n  - name: a\n    match: {hosts: [x.example]}\n    class: exact\n    undo:\n"
     "      - {method: POST, url: 'https://x.example', repeatable: sometimes}\n", "must be true or false"),
])
def test_mistakes_in_packs_are_located(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "pack.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_packs([path])
    assert any(message in str(p) and str(p).startswith(f"{path}:") for p in err.value.problems), err.value.problems


def test_policy_check_validates_undo_packs(tmp_path: Path) -> None:
    """`goex-proxy policy check FILE` tells an undo pack from a policy and reports its mistakes with positions."""
    from click.testing import CliRunner

    from goex_proxy.cli import cli

    bad = tmp_path / "pack.yaml"
    bad.write_text("version: 1\nrules:\n  - name: a\n    match: {hosts: [x.example]}\n    class: exact\n    undo:\n"
                   "      - {method: DELETE, url: '${reponse.json.id}'}\n")
    result = CliRunner().invoke(cli, ["policy", "check", str(bad)])
    assert result.exit_code == 1 and f"{bad}:7:" in result.output and "unknown variable 'reponse'" in result.output
    from goex_proxy.presets import undo_dir, undo_names

    shipped = [str(builtin_dir() / f"{n}.yaml") for n in builtin_names()]
    shipped += [str(undo_dir() / f"{n}.yaml") for n in undo_names()]
    checked = CliRunner().invoke(cli, ["policy", "check", *shipped])
    assert checked.exit_code == 0 and "warning" not in checked.output, checked.output  # none on a fresh install


def test_policy_check_warns_about_unlimited_irreversible_calls(tmp_path: Path) -> None:
    """An allow rule that lets an agent delete Slack messages without a limit is pointed out; a limited one is not."""
    from click.testing import CliRunner

    from goex_proxy.cli import cli

    (tmp_path / "slack.yaml").write_text("""version: 1
rules:
  - name: everything on slack
    allow: {host: slack.com, methods: [POST], path: "/api/*"}
  - name: a few deletes
    allow: {host: slack.com, methods: [POST], path: /api/files.delete, limit: {count: 2, per: 1h}}
""")
    config = tmp_path / "config.yaml"
    config.write_text("version: 1\nagents: {bot: {token: t0ken-of-the-bot}}\npolicies: [slack.yaml]\n")
    result = CliRunner().invoke(cli, ["policy", "check", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "warning: rule 'everything on slack' allows POST slack.com/api/chat.delete with no limit" in result.output
    assert "irreversible: a deleted Slack message cannot be restored" in result.output
    assert "'a few deletes'" not in result.output


def test_a_row_whose_url_held_a_byte_that_is_not_utf8_is_not_planned(tmp_path: Path) -> None:
    """mitmproxy reads a byte of the request target that is not UTF-8 as a lone surrogate, which the audit writer
    stores as the text `\\udcff` (SQLite takes no surrogate): an agent's literal `\\udcff` reads back the same. An
    undo planned from the row would act on the object named by that text, not the one the agent's request reached."""
    from goex_proxy.audit import store as audit
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter
    from goex_proxy.ids import RequestIds

    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    request_id = RequestIds().new(1_700_000_000)
    try:
        writer.record_intent({"id": request_id, "ts": 1_700_000_000.0, "agent": "bot", "method": "PUT",
                              "scheme": "https", "host": "photos.s3.amazonaws.com", "port": 443,
                              "path": "/cats/\udcff.jpg", "url": f"{BUCKET}/cats/\udcff.jpg", "req_headers": "[]",
                              "decision": "allow"}).result(5)
        writer.record_outcome(request_id, {"status": 200, "ended": 1.0, "duration_ms": 1.0, "resp_headers": json.dumps(
            [["x-amz-version-id", "v2"], ["ETag", '"abc"']])}).result(5)
    finally:
        writer.close()
    row = audit.get(audit.open_db(tmp_path / "a.db", readonly=True), request_id)
    assert row["url"] == f"{BUCKET}/cats/\\udcff.jpg"  # as stored: the text, not the byte
    p = plan(request_id, Exchange.from_row(row), RULES)
    assert p.verdict == "not planned" and not p.steps and "UTF-8" in p.reason
    assert plan("R", s3("PUT", "/cats/%FF.jpg", 200, **{"x-amz-version-id": "v2"}), RULES).verdict == "plan"
