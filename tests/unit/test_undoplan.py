"""The undo planner: shipped packs load, rows get their class, plans are rendered from the response's identifiers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from goex_proxy.errors import ConfigError
from goex_proxy.presets import undo_dir as builtin_dir
from goex_proxy.presets import undo_names as builtin_names
from goex_proxy.undoplan import Exchange, classify, on_origin, plan, preimage_read
from goex_proxy.undorules import check_pack_text, load_packs, parse_template

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
    (s3("PUT", "/k", 200, ETag='"e"'), "needs-preimage", "not planned"),   # unversioned: needs the old bytes
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
                                      "http://localhost.evil.example:3000/posts/7"])
def test_a_compensation_never_leaves_the_original_origin(location: str) -> None:
    """The upstream's answer names where the compensation goes; an answer pointing elsewhere plans nothing, so the
    credential injected on replay cannot be carried to another origin."""
    created = Exchange("POST", "http://localhost:3000/posts", (), b"{}", 201, (("Location", location),), b"{}")
    p = plan("R", created, RULES)
    assert p.verdict == "not planned" and not p.steps
    assert "off the original origin" in p.reason and location.lstrip("/") in p.reason


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
    assert classify(RULES, failed) == "needs-preimage"
    p = plan("R", failed, RULES)
    assert p.verdict == "not planned" and "reading it failed: connection refused" in p.reason


@pytest.mark.parametrize(("method", "path", "read"), [
    ("PUT", "/cats/tom.jpg", f"GET {BUCKET}/cats/tom.jpg"),          # an object: read what it replaces
    ("DELETE", "/cats/tom.jpg", f"GET {BUCKET}/cats/tom.jpg"),
    ("PUT", "/", None),                                               # creating the bucket: nothing to read
    ("PUT", "/big.iso?partNumber=2&uploadId=u1", None),               # a multipart part is not the object
    ("DELETE", "/cats/tom.jpg?versionId=v1", None),                   # irreversible anyway
])
def test_pre_images_are_read_only_where_a_rule_could_use_them(method: str, path: str, read: str | None) -> None:
    step = preimage_read(RULES, Exchange(method, BUCKET + path))
    assert (step.describe() if step else None) == read


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
