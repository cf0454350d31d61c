"""The decide stage on mitmproxy test flows: it decides on what the upstream will see, and refuses what it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mitmproxy.net import encoding
from mitmproxy.test import taddons, tflow

from goex_proxy.addons import decide as decide_module
from goex_proxy.addons import flowmeta
from goex_proxy.addons.decide import Decide
from goex_proxy.addons.state import ProxyState
from tests.conftest import stage_state
from tests.hookrun import finished

POLICY = """
version: 1
name: p
rules:
  - name: post to C1
    allow: {host: address, methods: [POST], path: /path, when: 'request.json.channel == "C1"'}
  - name: read anything
    allow: {host: address, methods: [GET], path: "/**"}
  - name: not the secrets
    deny: {host: address, path: "/secret/**", reason: secrets stay here}
"""


@pytest.fixture
def state(tmp_path: Path):
    with stage_state(tmp_path, POLICY) as s:
        yield s


def post(raw: bytes, *codings: str):
    """A POST to http://address:22/path by agent `bot` with body bytes `raw` sent as they are, one header per coding."""
    f = tflow.tflow()
    f.request.method = "POST"
    f.request.raw_content = raw
    for coding in codings:
        f.request.headers.add("Content-Encoding", coding)
    flowmeta.set_agent(f, "bot")
    return f


def get(path: str):
    """A GET of `path` on address:22 by agent `bot`."""
    f = tflow.tflow()
    f.request.path = path
    flowmeta.set_agent(f, "bot")
    return f


def decided(state: ProxyState, f):
    """Run the decide stage on `f`; the flow back, with its response (None when it would be forwarded)."""
    with taddons.context():
        finished(Decide(state).request(f))
    return f


def refused(f, rule: str, *words: str) -> None:
    """`f` was answered 403 by goex-proxy before policy under `rule`, with a reason containing `words`, and audited."""
    assert f.response is not None and f.response.status_code == 403, "a refused request is not forwarded"
    body = json.loads(f.response.content)
    assert body["rule"] == rule and body["reason"].startswith("refused before policy: ")
    assert all(w in body["reason"] for w in words), body["reason"]
    d = flowmeta.decision(f)
    assert d is not None and d.effect == "deny" and d.rule == rule and d.reason == body["reason"]


@pytest.mark.parametrize(("path", "words"), [
    ("/admin;x=1", "';' starts path parameters"),
    ("/files/a%2F..%2F..%2Fadmin", "escaped '/' (%2F) makes a '.' or '..' segment"),
    ("/files/a%2f.%2fadmin", "escaped '/' (%2F) makes a '.' or '..' segment"),
    ("/public/../admin", "a '.' or '..' segment"),
])
def test_an_ambiguous_path_is_refused_naming_its_kind(state, path, words) -> None:
    """Path parameters and escaped slashes hiding dot segments are refused with 403, saying which it is."""
    f = decided(state, get(path))
    refused(f, "request-target", f"the path {path!r} is ambiguous: ", words)


@pytest.mark.parametrize("path", ["/files/a%3Bb", "/projects/group%2Fname", "/projects/group%2fname/issues"])
def test_escaped_semicolons_and_slashes_in_data_are_decided_by_policy(state, path) -> None:
    """`%3B` and a lone `%2F` inside a segment are data: the request reaches the policy, which allows it."""
    f = decided(state, get(path))
    assert f.response is None and flowmeta.decision(f).effect == "allow"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "identity", "GZIP"])
def test_an_encoded_json_body_reaches_the_policy_decoded(state, coding) -> None:
    """A condition on `request.json` sees the decoded body of every Content-Encoding the proxy reads."""
    ok = decided(state, post(encoding.encode(b'{"channel":"C1"}', coding.lower()), coding))
    other = decided(state, post(encoding.encode(b'{"channel":"C2"}', coding.lower()), coding))
    assert ok.response is None and flowmeta.decision(ok).rule == "p/post to C1"
    assert other.response.status_code == 403 and flowmeta.decision(other).rule is None
    assert b"refused before policy" not in other.response.content


@pytest.mark.parametrize(("raw", "codings", "words"), [
    (b'{"channel":"C2"}', ["gzip"], "Content-Encoding 'gzip' could not be decoded (error: Error -3 "),
    (encoding.encode(b'{"channel":"C2"}', "gzip")[:-6], ["gzip"], "Content-Encoding 'gzip' could not be decoded"),
    (b'{"channel":"C2"}', ["deflate"], "Content-Encoding 'deflate' could not be decoded (error: "),
    (b'{"channel":"C2"}', ["br"], "Content-Encoding 'br' could not be decoded"),
    (b'{"channel":"C2"}', ["zstd"], "Content-Encoding 'zstd' could not be decoded"),
    (b'{"channel":"C2"}', ["compress"], "Content-Encoding 'compress' could not be decoded (goex-proxy reads only "),
    (b"eyJjaGFubmVsIjoiQzIifQ==", ["base64"], "Content-Encoding 'base64' could not be decoded"),
    (encoding.encode(encoding.encode(b'{"channel":"C2"}', "gzip"), "br"), ["gzip, br"], "'gzip, br' could not be"),
    (encoding.encode(encoding.encode(b'{"channel":"C2"}', "gzip"), "gzip"), ["gzip", "gzip"], "'gzip, gzip' could"),
])
def test_a_body_the_proxy_cannot_decode_is_refused(state, raw, codings, words) -> None:
    """A corrupt, unknown, codec-only or stacked Content-Encoding is refused with 403, not decided on raw bytes."""
    f = decided(state, post(raw, *codings))
    refused(f, "request-body", words, "it is refused rather than decided on bytes the policy cannot read")


def test_an_aws_chunked_body_reaches_the_policy_unframed(state) -> None:
    """S3 streaming uploads (boto3's default) are decided on their payload, as S3 reads it, not on the framing."""
    def framed(payload: bytes) -> bytes:
        return b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n" % (len(payload), payload)

    ok = decided(state, post(framed(b'{"channel":"C1"}'), "aws-chunked"))
    other = decided(state, post(framed(b'{"channel":"C2"}'), "aws-chunked"))
    broken = decided(state, post(framed(b'{"channel":"C1"}') + b"smuggled", "aws-chunked"))
    assert ok.response is None and flowmeta.decision(ok).rule == "p/post to C1"
    assert other.response.status_code == 403 and flowmeta.decision(other).rule is None
    refused(broken, "request-body", "Content-Encoding 'aws-chunked' could not be decoded (ValueError: ")


def test_an_unknown_coding_on_an_empty_body_is_left_to_policy(state) -> None:
    """With no body there are no bytes to misread: the policy decides as usual."""
    f = get("/path")
    f.request.headers["Content-Encoding"] = "compress"
    f.request.raw_content = b""
    assert decided(state, f).response is None and flowmeta.decision(f).effect == "allow"


@pytest.mark.parametrize("coding", [None, "gzip", "br"])
def test_a_json_body_with_a_duplicate_key_is_refused(state, coding) -> None:
    """`{"channel":"C1","channel":"C2"}`, plain or encoded, is refused naming the key, not allowed on its last value."""
    body = b'{"text":"hi","channel":"C2","channel":"C1"}'
    f = decided(state, post(encoding.encode(body, coding), coding) if coding else post(body))
    refused(f, "request-body", "the JSON body has the key 'channel' twice in one object")


def test_a_key_repeated_in_different_objects_is_decided_by_policy(state) -> None:
    """The same key in two different objects is not a duplicate: the policy decides, and allows C1."""
    f = decided(state, post(b'{"channel":"C1","a":{"k":1},"b":{"k":2}}'))
    assert f.response is None and flowmeta.decision(f).rule == "p/post to C1"


def test_the_body_checks_fail_closed(state, monkeypatch) -> None:
    """If checking the body raises, the request gets 502 and is not forwarded."""
    def boom(body: bytes) -> tuple[str | None, object]:
        raise RuntimeError("collaborator failed")

    monkeypatch.setattr(decide_module, "checked_json", boom)
    f = decided(state, post(b'{"channel":"C1"}'))
    assert f.response.status_code == 502 and b"decide" in f.response.content


def test_an_escaped_slash_must_be_allowed_read_either_way(state) -> None:
    """`/secret%2Fkeys` is one segment to policy but `/secret/keys` to a server that decodes %2F: since policy denies
    that reading, the request is refused; where both readings are allowed, it goes on."""
    f = decided(state, get("/secret%2Fkeys"))
    refused(f, "request-target", "servers that decode %2F read it as '/secret/keys'", "secrets stay here")
    assert decided(state, get("/projects/group%2Fname")).response is None
