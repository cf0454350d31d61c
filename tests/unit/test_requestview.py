"""The pure checks on a request's path and body that refuse what servers could read more than one way."""

from __future__ import annotations

import gc
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goex_proxy.globs import compile_path
from goex_proxy.policy.requestview import (
    NOT_PARSED,
    RequestView,
    aws_unchunked,
    body_ambiguity,
    canonical_path,
    checked_json,
    path_ambiguity,
    readings,
    repeated_keys,
    value_readings,
    with_json,
)

#: sentence -> (raw path, a word the reason must contain, or None when the path is not ambiguous)
AMBIGUITIES = {
    "a raw ';' starts path parameters some servers drop": ("/admin;x=1", "';'"),
    "a bare ';' at the end is path parameters too": ("/public/ok;", "';'"),
    "an escaped ';' is data": ("/files/a%3Bb", None),
    "a lower-case escaped ';' is data": ("/files/a%3bb", None),
    "an escaped '/' in a segment is data": ("/projects/group%2Fname", None),
    "a lower-case escaped '/' in a segment is data": ("/projects/group%2fname/issues", None),
    "a trailing escaped '/' is like a trailing '/'": ("/a/b%2F", None),
    "escaped slashes around '..' hide dot segments": ("/files/a%2F..%2F..%2Fadmin", "%2F"),
    "lower-case escaped slashes around '..' hide dot segments": ("/files/a%2f..%2fadmin", "%2F"),
    "escaped slashes around escaped dots hide dot segments": ("/files/a%2F%2e%2E%2Fadmin", "%2F"),
    "an escaped URL in a segment is data": ("/v1/urls/https%3A%2F%2Fexample.com", None),
    "a raw '#' is cut at by servers that drop fragments": ("/admin#x", "'#'"),
    "an escaped slash before a single dot makes a dot segment": ("/a%2F.%2Fb", "'.' or '..'"),
    "an escaped backslash is ambiguous": ("/files/a%5c..%5cadmin", "backslash"),
    "a raw dot-dot segment names its kind": ("/public/../secret", "'.' or '..'"),
    "a raw empty segment names its kind": ("/public//admin", "empty segment"),
    "a raw backslash names its kind": ("/public\\admin", "backslash"),
    "a plain path is not ambiguous": ("/public/admin/x", None),
    "dots inside a segment are not dot segments": ("/a/..b/c.d/...", None),
}


@pytest.mark.parametrize("sentence", sorted(AMBIGUITIES))
def test_path_ambiguity(sentence: str) -> None:
    """Each ambiguous spelling is refused with a reason naming its kind; legitimate spellings pass."""
    raw, word = AMBIGUITIES[sentence]
    reason = path_ambiguity(raw)
    if word is None:
        assert reason is None and canonical_path(raw) is not None
    else:
        assert reason is not None and word in reason
        assert canonical_path(raw) is None


def test_canonical_path_keeps_data_escapes_upper_cased() -> None:
    """Escaped ';' and '/' stay escaped (upper-cased) in the path policies match, so `/a*` globs see one segment."""
    assert canonical_path("/files/a%3bb") == "/files/a%3Bb"
    assert canonical_path("/projects/group%2fname") == "/projects/group%2Fname"


#: sentence -> (decoded body, the key the reason must name, or None when the body is not ambiguous)
BODIES = {
    "a key twice at the top is ambiguous": (b'{"channel":"C_OK","channel":"C_SECRET"}', "channel"),
    "a key twice in a nested object is ambiguous": (b'{"a":{"b":[{"k":1,"k":2}]}}', "k"),
    "a key twice in an object inside a top-level array is ambiguous": (b' \n[{"x":1},{"y":1,"y":2}]', "y"),
    "a key spelled once with an escape is the same key": (b'{"channel":"C_OK","chann\\u0065l":"C_SECRET"}', "channel"),
    "a key twice in a UTF-8 body with a BOM is ambiguous": (b'\xef\xbb\xbf{"k":1,"k":2}', "k"),
    "a key twice in a UTF-16 body is ambiguous": ('{"k":1,"k":2}'.encode("utf-16"), "k"),
    "a key twice before the body turns out not to be JSON still counts": (b'{"a":{"k":1,"k":2}, oops', "k"),
    "the same key in two different objects is fine": (b'{"a":{"k":1},"b":{"k":2}}', None),
    "the same string as a key and a value is fine": (b'{"k":"k","v":["k","k"]}', None),
    "a JSON body without duplicates is fine": (b'{"channel":"C1","text":"hi"}', None),
    "a JSON scalar is fine": (b'"{\\"k\\":1,\\"k\\":2}"', None),
    "a form body is not parsed": (b"k=1&k=2", None),
    "text that merely contains braces is not parsed": (b'hello {"k":1,"k":2}', None),
    "a body that starts like JSON but is not is fine": (b"{not json", None),
    "an empty body is fine": (b"", None),
}


@pytest.mark.parametrize("sentence", sorted(BODIES))
def test_body_ambiguity(sentence: str) -> None:
    """A JSON body with a key twice in one object, at any depth, is refused naming the key; other bodies pass."""
    body, key = BODIES[sentence]
    reason = body_ambiguity(body)
    if key is None:
        assert reason is None
    else:
        assert reason is not None and f"the key {key!r} twice" in reason


def test_a_json_body_nested_past_the_parser_is_refused() -> None:
    """A body nested deeper than the JSON parser can follow is refused instead of raising."""
    gc.collect()  # earlier tests' garbage: a finalizer the collector ran that deep could not run (RecursionError)
    reason = body_ambiguity(b"[" * 200_000)
    assert reason is not None and "nests too deeply" in reason


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_every_encoding_the_policy_reads_is_checked(encoding: str) -> None:
    """In every encoding `RequestView.json` reads, whitespace before the JSON does not let a duplicate key through."""
    ok, dup = ' \t{"k":1}'.encode(encoding), ' \t[{"k":1,"k":2}]'.encode(encoding)
    view = RequestView(agent=None, method="POST", scheme="https", host="h", port=443, path="/", body=ok)
    assert view.json == {"k": 1}
    assert body_ambiguity(ok) is None and body_ambiguity(dup) is not None


def test_aws_chunked_bodies_are_read_as_s3_reads_them() -> None:
    """Chunk sizes, chunk signatures and trailers are dropped; what is left is the payload S3 stores."""
    framed = b"5\r\nhello\r\n6;chunk-signature=ab12\r\n world\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    assert aws_unchunked(framed) == b"hello world"
    assert aws_unchunked(b"0\r\n\r\n") == b""


@pytest.mark.parametrize("framed", [
    b"", b"hello", b"5\r\nhello world\r\n0\r\n\r\n", b"5\r\nhel\r\n0\r\n\r\n", b"5\r\nhello\r\n",
    b"5\r\nhello\r\n0\r\n", b"5\r\nhello\r\n0\r\n\r\nsmuggled", b"5\r\nhello\r\n0\r\nnot a trailer\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n",
])
def test_broken_aws_chunked_framing_raises(framed: bytes) -> None:
    """A body whose aws-chunked framing does not add up raises ValueError instead of being read some other way."""
    with pytest.raises(ValueError):
        aws_unchunked(framed)


FORM = (("content-type", "application/x-www-form-urlencoded"),)


def request(query: str = "", body: bytes = b"", headers: tuple[tuple[str, str], ...] = FORM) -> RequestView:
    pairs = tuple(tuple(p.split("=", 1)) for p in query.split("&") if p)
    return RequestView("bot", "POST", "https", "h", 443, "/", pairs, headers, body)  # type: ignore[arg-type]


def test_repeated_keys_are_found_in_the_query_and_in_a_declared_form() -> None:
    """Each key sent more than once, where it was sent, and its values in order; a body not declared a form is not
    read as one."""
    view = request("a=1&b=2&a=3&a=1", b"c=1&c=2&d=4")
    assert repeated_keys(view) == [("query", "a", ("1", "3", "1")), ("form", "c", ("1", "2"))]
    assert repeated_keys(request("a=1", b"c=1&c=2", headers=())) == []
    assert repeated_keys(request("a=1&b=1", b"c=1")) == []


def test_conditions_see_the_first_value_and_a_reading_sees_the_one_it_takes() -> None:
    """`request.query` and `request.form` hold each key's first value (the form used to hold the last); a reading
    of the repeated keys holds the values it took, and nothing else changes."""
    view = request("a=1&a=2&b=x", b"c=1&c=2&d=4")
    context = view.cel_context(0)["request"]
    assert (context["query"], context["form"]) == ({"a": "1", "b": "x"}, {"c": "1", "d": "4"})
    [reading] = [r for how, r in value_readings(view) if how == "the query's 'a' as '2' and the form's 'c' as '2'"]
    picked = reading.cel_context(0)["request"]
    assert (picked["query"], picked["form"]) == ({"a": "2", "b": "x"}, {"c": "2", "d": "4"})
    assert (reading.query, reading.body, reading.url) == (view.query, view.body, view.url)


def test_value_readings_take_every_combination_of_distinct_values_but_the_first() -> None:
    """The view itself is the first reading (every first value); the others cover each value of each repeated key,
    in every combination, once."""
    view = request("a=1&a=2&a=1&b=x&b=y")
    taken = sorted(tuple(sorted(r.cel_context(0)["request"]["query"].items())) for _, r in value_readings(view))
    assert taken == [(("a", "1"), ("b", "y")), (("a", "2"), ("b", "x")), (("a", "2"), ("b", "y"))]


def test_a_method_override_sent_twice_in_a_form_is_read_both_ways() -> None:
    """Every `_method` value counts, in the form as in the query."""
    view = request(body=b"_method=GET&_method=DELETE")
    assert sorted(r.method for _, r, must_allow in readings(view) if must_allow) == ["DELETE", "GET"]


@pytest.mark.parametrize(("pattern", "path", "fold_case", "optional_slash", "matches"), [
    ("/api/files.delete", "/api/FILES.DELETE", False, False, False),
    ("/api/files.delete", "/api/FILES.DELETE", True, False, True),
    ("/api/files.delete", "/api/files.delete/", False, False, False),
    ("/api/files.delete", "/api/files.delete/", False, True, True),
    ("/api/files.delete/", "/api/files.delete", False, True, True),
    ("/api/files.delete", "/api/FILES.DELETE/", True, False, False),
    ("/api/files.delete", "/api/FILES.DELETE/", True, True, True),
    ("/API/*.delete", "/api/chat.DELETE", True, False, True),
    ("/api/*.delete", "/api/chat.delete/x", True, True, False),
    ("/", "/", True, True, True),
])
def test_path_globs_match_as_a_lenient_router_routes(pattern, path, fold_case, optional_slash, matches) -> None:
    """Case folding (RE2's, on the whole pattern) and an optional trailing slash, each only when asked for."""
    assert compile_path(pattern).matches_path(path, fold_case, optional_slash) is matches



# The body is parsed once: the duplicate-key check's parse is what `RequestView.json` would have parsed.
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5))
_json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=10)
_bodies = st.one_of(_json_values.map(lambda v: json.dumps(v).encode()),
                    st.sampled_from([b"", b"{", b"[1,", b'{"a": 1, "a": 2}', b"\xff{}", b"  {\"a\": [1]}", b"a=1&b=2",
                                     b"\xef\xbb\xbf{\"bom\": true}", b"null", b'"text"', b"[" * 100_000]),
                    st.binary(max_size=12))


@settings(max_examples=400, deadline=None)
@given(body=_bodies)
def test_the_checked_parse_is_the_views_json(body: bytes) -> None:
    problem, parsed = checked_json(body)
    assert problem == body_ambiguity(body)
    fresh = RequestView(None, "POST", "https", "h", 443, "/", body=body)
    seeded = with_json(RequestView(None, "POST", "https", "h", 443, "/", body=body), parsed)
    if problem is None:
        assert json.dumps(seeded.json) == json.dumps(fresh.json)  # same values, same key order
        assert seeded.cel_context(0, [("request", "json")]) == fresh.cel_context(0, [("request", "json")])
    if parsed is not NOT_PARSED:
        assert "json" in seeded.__dict__  # given, not parsed again


def test_a_condition_reading_the_body_still_sees_it_when_its_json_was_given() -> None:
    from goex_proxy.policy.cel import compile_condition

    body = b'{"name": "widget", "n": 2}'
    view = with_json(RequestView(None, "POST", "https", "h", 443, "/", body=body), checked_json(body)[1])
    for source, expected in (('request.json.name == "widget"', True), ('request.body.contains("widget")', True),
                             ("request.json.n > 2", False)):
        condition = compile_condition(source)
        assert condition.evaluate(view.cel_context(0, condition.paths)) is expected


def test_an_upstreams_malformed_field_is_named_by_its_place_not_quoted() -> None:
    """The 502 for an upstream's malformed header says which field by its place: quoting its name (as a request's is
    quoted to its own client) would give back bytes the scrubber never saw, such as a secret's hex as a header name."""
    from mitmproxy import http

    from goex_proxy.addons.decide import fields_problem

    secret_hex = b"7866786f622d53454352455420"
    answer = http.Response.make(200, b"", [(b"date", b"today"), (secret_hex, b"a\x00b")])
    problem = fields_problem(answer)
    assert problem == "the value of the header number 2 holds a CR, LF or NUL byte"
    bad_name = http.Response.make(200, b"", [(secret_hex + b" x", b"v")])
    assert fields_problem(bad_name) == "the name of header number 1 is not a token"
    asked = http.Request.make("GET", "http://example.com/", b"", [(b"x-note", b"a\x00b")])
    assert fields_problem(asked) == "the value of the header 'x-note' holds a CR, LF or NUL byte"
