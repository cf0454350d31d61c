"""A `_method` field in a multipart/form-data body, which Laravel, Symfony and Rails read as the method to run (as
they read it in a urlencoded form): the policy decides the request as that method too. Every spelling here is
checked against a real multipart parser (Werkzeug's): whatever `_method` it reads, the policy reads."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from mitmproxy.test import taddons, tflow
from werkzeug.formparser import parse_form_data

from goex_proxy.addons import flowmeta
from goex_proxy.addons.decide import Decide
from goex_proxy.policy.requestview import MOST_FORM_FIELDS, RequestView
from tests.conftest import stage_state
from tests.hookrun import finished

POLICY = """
version: 1
name: p
rules:
  - name: post forms
    allow: {host: address, methods: [GET, POST], path: "/**"}
"""


def _built_by_httpx(fields: dict[str, str], files: dict[str, tuple[str, bytes]] | None = None) -> tuple[str, bytes]:
    """A multipart body as a real client writes it: its Content-Type and bytes."""
    request = httpx.Request("POST", "https://address/items/1", data=fields, files=files)
    return request.headers["content-type"], request.read()


def _view(content_type: str, body: bytes, method: str = "POST") -> RequestView:
    return RequestView(agent="bot", method=method, scheme="https", host="address", port=443, path="/items/1",
                       headers=(("content-type", content_type),), body=body)


def _decided(tmp_path: Path, content_type: str, body: bytes) -> Any:
    """What the decide stage answers a POST of this body with, under POLICY (None: it goes on)."""
    with stage_state(tmp_path, POLICY) as state:
        f = tflow.tflow()
        f.request.method = "POST"
        f.request.path = "/items/1"
        f.request.headers["content-type"] = content_type
        f.request.raw_content = body
        flowmeta.set_agent(f, "bot")
        with taddons.context():
            finished(Decide(state).request(f))
        return f.response


def _werkzeug_methods(content_type: str, body: bytes) -> set[str]:
    """The `_method` values Werkzeug's multipart parser reads from this body (form fields and file parts alike)."""
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    _, form, files = parse_form_data(environ)
    values = set(form.getlist("_method")) | {f.read().decode("latin-1") for f in files.getlist("_method")}
    return {v.strip().upper() for v in values}


B = "goexBoundary7MA4YWxk"
CT = f"multipart/form-data; boundary={B}"
#: Bodies written as other clients, or an agent that wants its DELETE unseen, write them.
SPELLINGS = {
    "quoted name": (CT, f'--{B}\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--{B}--\r\n'),
    "bare name": (CT, f"--{B}\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--{B}--\r\n"),
    "header and parameter in capitals": (
        CT, f'--{B}\r\nCONTENT-DISPOSITION: form-data; NAME="_method"\r\n\r\nDELETE\r\n--{B}--\r\n'),
    "LF line ends": (CT, f'--{B}\nContent-Disposition: form-data; name="_method"\n\nDELETE\n--{B}--\n'),
    "a file part named _method": (
        CT, f'--{B}\r\nContent-Disposition: form-data; name="_method"; filename="m.txt"\r\n'
            f'Content-Type: text/plain\r\n\r\nDELETE\r\n--{B}--\r\n'),
    "quoted boundary": (f'multipart/form-data; boundary="{B}"',
                        f'--{B}\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--{B}--\r\n'),
    "after a preamble and another field": (
        CT, f'preamble\r\n--{B}\r\nContent-Disposition: form-data; name="title"\r\n\r\nhello\r\n'
            f'--{B}\r\nContent-Disposition: form-data; name="_method"\r\nContent-Type: text/plain\r\n\r\n'
            f'delete \r\n--{B}--\r\n'),
}


@pytest.mark.parametrize("case", sorted(SPELLINGS))
def test_every_method_a_real_parser_reads_is_read_by_the_policy(case: str) -> None:
    content_type, text = SPELLINGS[case]
    body = text.encode()
    parsed = _werkzeug_methods(content_type, body)
    assert parsed == {"DELETE"}, f"{case}: the real parser reads {parsed}: the case is not what it says"
    assert "DELETE" in _view(content_type, body).override_methods


def test_a_form_a_real_client_writes_is_decided_as_the_method_it_names(tmp_path: Path) -> None:
    """A POST of a form with `_method=DELETE` (and a file) runs as a DELETE on Laravel: a policy that allows POST but
    not DELETE refuses it, as it refuses the same field in a urlencoded form."""
    content_type, body = _built_by_httpx({"_method": "DELETE", "title": "x"}, {"upload": ("a.txt", b"content")})
    assert _werkzeug_methods(content_type, body) == {"DELETE"}
    refusal = _decided(tmp_path, content_type, body)
    assert refusal is not None and refusal.status_code == 403
    assert b"DELETE" in refusal.content  # "no rule allows DELETE ..."


def test_a_form_without_the_field_is_read_as_its_own_method() -> None:
    """A file whose content mentions `_method`, and a field named like it but not it, are no override."""
    content_type, body = _built_by_httpx({"x_method": "DELETE", "_methods": "PUT"},
                                         {"upload": ("notes.txt", b"_method=DELETE\nname=_method\n")})
    assert _werkzeug_methods(content_type, body) == set()
    assert _view(content_type, body).override_methods == frozenset()
    # the same bytes declared as something else are no form at all
    assert _view("application/octet-stream", body).override_methods == frozenset()


def test_the_field_given_twice_counts_each_value() -> None:
    """Servers differ on a field given twice (PHP takes the last, others the first): both are decided."""
    body = (f'--{B}\r\nContent-Disposition: form-data; name="_method"\r\n\r\nPUT\r\n'
            f'--{B}\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--{B}--\r\n').encode()
    assert _view(CT, body).override_methods == frozenset({"PUT", "DELETE"})


def test_a_spelling_some_parsers_refuse_is_read_all_the_same() -> None:
    """Spaces around `=` (Werkzeug reads no field there; a more lenient parser may): read, so decided as DELETE too."""
    body = f'--{B}\r\nContent-Disposition: form-data ; name = "_method"\r\n\r\nDELETE\r\n--{B}--\r\n'.encode()
    assert "DELETE" in _view(CT, body).override_methods


def test_a_form_past_the_bounds_is_read_as_no_method(tmp_path: Path) -> None:
    """A Content-Disposition longer than any server takes, or more parts naming `method` than a form has, are not
    read to their end: one more `_method` is read as no method, which no rule allows (so a `_method` hidden past
    them is never let through unseen)."""
    long_line = (f'--{B}\r\nContent-Disposition: form-data; filename="{"x" * 9000}"; name="_method"\r\n\r\n'
                 f'DELETE\r\n--{B}--\r\n').encode()
    many = "".join(f'--{B}\r\nContent-Disposition: form-data; name="payment_method_{i}"\r\n\r\ncard\r\n'
                   for i in range(70)) + f'--{B}\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n'
    for body in (long_line, many.encode() + f"--{B}--\r\n".encode()):
        assert "" in _view(CT, body).override_methods
        refusal = _decided(tmp_path, CT, body)
        assert refusal is not None and refusal.status_code == 403
    # within the bounds, every name is read
    few = "".join(f'--{B}\r\nContent-Disposition: form-data; name="payment_method_{i}"\r\n\r\ncard\r\n'
                  for i in range(10)) + f"--{B}--\r\n"
    assert _view(CT, few.encode()).override_methods == frozenset()


def _php_form(*parts: str) -> bytes:
    return "".join(f"--{B}\r\n{part}\r\n" for part in parts).encode("latin-1") + f"--{B}--\r\n".encode()


_D = 'Content-Disposition: form-data; name="_method"'
_TITLE = 'Content-Disposition: form-data; name="title"\r\n\r\nPOST'
#: Bodies PHP's own multipart parser (rfc1867.c) reads as `_method=DELETE` (each checked against `php -S` in
#: tests/e2e/test_php_method_override.py): header continuation lines, a lone CR as white space, single quotes, `==`,
#: a NUL ending a header line or the headers, and lines longer than PHP's 5 KiB buffer read as pieces.
PHP_SPELLINGS = {
    "folded before name": _php_form('Content-Disposition: form-data;\r\n name="_method"\r\n\r\nDELETE'),
    "folded on a line without a colon": _php_form('Content-Disposition: form-data;\r\nname="_method"\r\n\r\nDELETE'),
    "name split over two lines": _php_form('Content-Disposition: form-data; name="_met\r\nhod"\r\n\r\nDELETE'),
    "value on the next line": _php_form('Content-Disposition:\r\n form-data; name="_method"\r\n\r\nDELETE'),
    "lone CR": _php_form('Content-Disposition: form-data;\r name="_method"\r\n\r\nDELETE'),
    "lone CR after name=": _php_form('Content-Disposition: form-data; name=\r"_method"\r\n\r\nDELETE'),
    "single quotes": _php_form("Content-Disposition: form-data; name='_method'\r\n\r\nDELETE"),
    "name==": _php_form("Content-Disposition: form-data; name==_method\r\n\r\nDELETE"),
    "bare name with a quoted ;": _php_form('Content-Disposition: form-data; name=_method["a;b"]\r\n\r\nDELETE'),
    "NUL line ends the headers": _php_form(_D + "\r\n\x00junk\r\nDELETE", _TITLE),
    "NUL cuts a line joined to the next": _php_form(
        'Content-Disposition: form-data; name="_met\x00zz\r\nhod"\r\n\r\nDELETE'),
    "5 KiB header line ends the headers": _php_form(_D + "\r\nX-Pad: " + "A" * 5113 + "\r\nDELETE", _TITLE),
    "name cut where a 5 KiB piece ends": _php_form(
        "Content-Disposition: form-data; x=" + "A" * (5120 - 34 - 14) + "; name=_methodX:y\r\n\r\nDELETE"),
}


@pytest.mark.parametrize("case", sorted(PHP_SPELLINGS))
def test_every_method_php_reads_is_read_by_the_policy(case: str) -> None:
    assert "DELETE" in _view(CT, PHP_SPELLINGS[case]).override_methods


def test_a_value_php_trims_to_a_method_is_read_as_it() -> None:
    """PHP's `trim` takes a NUL off a value, Python's `strip` does not: both readings count."""
    assert {"DELETE", "DELETE\0"} <= _view(CT, _php_form(_D + "\r\n\r\nDELETE\x00")).override_methods


def test_a_body_of_header_lines_past_the_bound_is_read_as_no_method() -> None:
    """Part headers read as PHP reads them, a line at a time, stop at a bound: past it, no method."""
    body = _php_form(_D + "\r\n" + "X-A: b\r\n" * 5000 + "\r\nDELETE")
    assert "" in _view(CT, body).override_methods


def test_an_override_value_is_read_as_php_trims_it() -> None:
    """PHP's `trim` takes a trailing NUL off (`str.strip` keeps it): `_method=DELETE%00` is read as DELETE, in the
    query, a urlencoded form and a header alike."""
    query = RequestView(agent="a", method="GET", scheme="https", host="h", port=443, path="/",
                        query=(("_method", "DELETE\0"),))
    form = RequestView(agent="a", method="POST", scheme="https", host="h", port=443, path="/",
                       headers=(("content-type", "application/x-www-form-urlencoded"),), body=b"_method=DELETE%00")
    header = RequestView(agent="a", method="POST", scheme="https", host="h", port=443, path="/",
                         headers=(("x-http-method-override", "DELETE\0"),))
    for view in (query, form, header):
        assert "DELETE" in view.override_methods


def _rack_form(*parts: str, end: bytes = f"--{B}--\r\n".encode()) -> bytes:
    return "".join(f"--{B}\r\n{part}\r\n" for part in parts).encode("utf-8") + end


#: POSTs that Rack::MethodOverride (Rack 2.2.22, Debian bookworm's ruby-rack; the middleware Rails and Sinatra run)
#: runs as another method: `req.POST["_method"].to_s.upcase`, read by hand with `Rack::MockRequest`-style envs. CI has
#: no Ruby: each is written with the method Rack read, by case: (Content-Type, body, method). Rack names a part by
#: `/Content-Disposition:[^:]*;\s*name=(VALUE)/` anywhere in its head (over line ends, to a colon), else by its
#: Content-ID; unescapes any backslash escape; drops leading `[`/`]` and trailing `]` of a name (`normalize_params`);
#: starts a value after the first CRLF CRLF and ends it at `--boundary` with or without a CRLF before; parses
#: multipart/mixed and multipart/related too, and a body without a boundary it can read (or a POST without a
#: Content-Type) as a urlencoded form; and upcases a value as Unicode does (`ı` to `I`), in its part's charset.
RACK_READS = {
    "name in brackets": (CT, _rack_form('Content-Disposition: form-data; name="[_method]"\r\n\r\nDELETE'), "DELETE"),
    "name with brackets around": (CT, _rack_form('Content-Disposition: form-data; name="]]_method]"\r\n\r\nDELETE'),
                                  "DELETE"),
    "name with a trailing ]": (CT, _rack_form('Content-Disposition: form-data; name="_method]]"\r\n\r\nDELETE'),
                               "DELETE"),
    "urlencoded name in brackets": ("application/x-www-form-urlencoded", b"[_method]=DELETE", "DELETE"),
    "name backslash-escaped": (CT, _rack_form('Content-Disposition: form-data; name="_\\method"\r\n\r\nDELETE'),
                               "DELETE"),
    "every letter escaped": (CT, _rack_form('Content-Disposition: form-data; name="\\_\\m\\e\\t\\h\\o\\d"\r\n\r\nDELETE'),
                             "DELETE"),
    "named by Content-ID": (CT, _rack_form("Content-ID: _method\r\n\r\nDELETE"), "DELETE"),
    "named by Content-ID on its next line": (
        CT, _rack_form("Content-Disposition: form-data\r\ncontent-id:\r\n _method\r\n\r\nDELETE"), "DELETE"),
    "name on a next line that has a colon": (
        CT, _rack_form("Content-Disposition: form-data\r\n; name=_method x:y\r\n\r\nDELETE"), "DELETE"),
    "name quoted on a next line that has a colon": (
        CT, _rack_form('Content-Disposition: form-data\r\nX; name="_method" a:b\r\n\r\nDELETE'), "DELETE"),
    "value after the first CRLF CRLF, not an LF LF": (
        CT, f'--{B}\r\nContent-Disposition: form-data; name="_method"\n\nPOST\r\n\r\nDELETE\r\n--{B}--\r\n'.encode(),
        "DELETE"),
    "value ends at the boundary without a CRLF": (
        CT, f'--{B}\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE--{B}--\r\n'.encode(), "DELETE"),
    "multipart/mixed": (f"multipart/mixed; boundary={B}", _rack_form(_D + "\r\n\r\nDELETE"), "DELETE"),
    "multipart/related": (f"multipart/related; boundary={B}", _rack_form(_D + "\r\n\r\nDELETE"), "DELETE"),
    "no Content-Type": (None, b"_method=DELETE", "DELETE"),
    "multipart without a boundary": ("multipart/form-data", b"_method=DELETE", "DELETE"),
    "multipart/mixed without a boundary": ("multipart/mixed", b"_method=DELETE", "DELETE"),
    "multipart with an empty boundary": ('multipart/form-data; boundary=""', b"_method=DELETE", "DELETE"),
    "bare name ends where a token does (quote)": (
        CT, _rack_form('Content-Disposition: form-data; name=_method"x"\r\n\r\nDELETE'), "DELETE"),
    "bare name ends where a token does (parenthesis)": (
        CT, _rack_form("Content-Disposition: form-data; name=_method(x)\r\n\r\nDELETE"), "DELETE"),
    "dotless i in UTF-8": (CT, _rack_form(_D + "\r\n\r\nopt\u0131ons"), "OPTIONS"),
    "dotless i in UTF-8, UNLINK": (CT, _rack_form(_D + "\r\n\r\nunl\u0131nk"), "UNLINK"),
    "dotless i in ISO-8859-9": (
        CT, _rack_form(_D + "\r\nContent-Type: text/plain; charset=ISO-8859-9\r\n\r\nopt").replace(
            b"\r\n--", b"\xfdons\r\n--", 1), "OPTIONS"),
    "dotless i in windows-1254": (
        CT, _rack_form(_D + "\r\nContent-Type: text/plain; charset=Windows-1254\r\n\r\nl").replace(
            b"\r\n--", b"\xfdnk\r\n--", 1), "LINK"),
}


@pytest.mark.parametrize("case", sorted(RACK_READS))
def test_every_method_rack_reads_is_read_by_the_policy(case: str) -> None:
    content_type, body, method = RACK_READS[case]
    headers = () if content_type is None else (("content-type", content_type),)
    view = RequestView(agent="bot", method="POST", scheme="https", host="address", port=443, path="/items/1",
                       headers=headers, body=body)
    assert method in view.override_methods or "" in view.override_methods


#: Bodies Werkzeug (3.1) reads a `_method` from that the policy did not: RFC 2231 names (`name*`, percent-encoded,
#: continued over `name*0`, `name*1`, ...), any backslash escape in a quoted name, a bare name ending where a token
#: does, and a value that Python upcases to a method (`ı` to `I`).
WERKZEUG_SPELLINGS = {
    "name*": _rack_form("Content-Disposition: form-data; name*=UTF-8''_method\r\n\r\nDELETE"),
    "name* percent-encoded": _rack_form(
        "Content-Disposition: form-data; name*=UTF-8''%5F%6D%65%74%68%6F%64\r\n\r\nDELETE"),
    "name continued": _rack_form("Content-Disposition: form-data; name*0=_me; name*1=thod\r\n\r\nDELETE"),
    "name continued, percent-encoded": _rack_form(
        "Content-Disposition: form-data; name*0*=utf-8''%5Fme; name*1*=%74hod\r\n\r\nDELETE"),
    "name continued, quoted and escaped": _rack_form(
        'Content-Disposition: form-data; name*0="_m"; name*1="e\\thod"\r\n\r\nDELETE'),
    "every letter escaped": _rack_form('Content-Disposition: form-data; name="\\_\\m\\e\\t\\h\\o\\d"\r\n\r\nDELETE'),
    "bare name ends where a token does": _rack_form("Content-Disposition: form-data; name=_method{x}\r\n\r\nDELETE"),
    "continued past a piece without a value": _rack_form(
        "Content-Disposition: form-data; name*0=_me; name*1= name*0=_me; name*1=thod\r\n\r\nDELETE"),
    "continued, a piece ending where a token does": _rack_form(
        "Content-Disposition: form-data; name*0=_me=; name*1=thod\r\n\r\nDELETE"),
    "dotless i": _rack_form(_D + "\r\n\r\nopt\u0131ons"),
}


@pytest.mark.parametrize("case", sorted(WERKZEUG_SPELLINGS))
def test_every_method_werkzeug_reads_is_read_by_the_policy(case: str) -> None:
    body = WERKZEUG_SPELLINGS[case]
    parsed = _werkzeug_methods(CT, body)
    assert parsed, f"{case}: Werkzeug reads no `_method`: the case is not what it says"
    methods = _view(CT, body).override_methods
    assert all(m in methods for m in parsed) or "" in methods


def test_an_override_longer_than_any_method_is_read_as_none() -> None:
    """A `_method` of 10 MB (a form read as urlencoded for want of a Content-Type) is no method: read as "", which no
    rule allows, not as a method whose name every reason and row would carry."""
    view = RequestView(agent="a", method="POST", scheme="https", host="h", port=443, path="/",
                       body=b"_method=" + b"A" * 1_000_000)
    assert view.override_methods == frozenset({""})


def test_a_form_of_more_fields_than_the_proxy_reads_is_refused_before_policy(tmp_path: Path) -> None:
    """A urlencoded form of millions of fields held the event loop for seconds while the policy parsed it (every
    other agent's requests waiting): past MOST_FORM_FIELDS it is refused before any parse; one below is decided."""
    content_type = "application/x-www-form-urlencoded"
    big = b"&".join(b"a%d=b" % i for i in range(MOST_FORM_FIELDS + 1))
    refusal = _decided(tmp_path, content_type, big)
    assert refusal is not None and refusal.status_code == 403 and b"more than 10,000 fields" in refusal.content
    assert _decided(tmp_path, content_type, b"&".join(b"a%d=b" % i for i in range(MOST_FORM_FIELDS))) is None


def test_a_json_body_s_method_is_read_as_laravel_reads_it(tmp_path: Path) -> None:
    """Laravel reads a JSON body as its form, and Symfony's `getMethod` runs a POST as the `_method` there: a POST of
    `{"_method": "DELETE"}` is a DELETE to it, refused by a policy that allows POST only. A `_method` that is not a
    text, or one nested deeper, is not read so by it (nor a JSON body not declared JSON)."""
    def view(body: bytes, content_type: str = "application/json") -> RequestView:
        return RequestView(agent="a", method="POST", scheme="https", host="h", port=443, path="/",
                           headers=(("content-type", content_type),), body=body)

    assert "DELETE" in view(b'{"_method": "delete", "title": "x"}').override_methods
    assert "DELETE" in view(b'{"_method": "DELETE"}', "application/vnd.api+json").override_methods
    assert view(b'{"_method": ["DELETE"], "x": {"_method": "DELETE"}}').override_methods == frozenset()
    assert view(b'{"_method": "DELETE"}', "text/plain").override_methods == frozenset()
    refusal = _decided(tmp_path, "application/json", b'{"_method": "DELETE"}')
    assert refusal is not None and refusal.status_code == 403 and b"DELETE" in refusal.content


def test_a_json_body_with_a_number_past_python_s_digit_limit_is_still_read(tmp_path: Path) -> None:
    """Found by a red team: one integer of 5,000 digits made the whole body "not JSON" to the policy (Python refuses
    to convert it), while PHP reads it as a float and Laravel (`isJson`: `/json` in the Content-Type, `text/json`
    too) runs the POST as its `_method`. The body is read as servers read it, the number a float."""
    body = b'{"_method": "DELETE", "n": ' + b"7" * 5000 + b"}"
    view = RequestView(agent="a", method="POST", scheme="https", host="h", port=443, path="/",
                       headers=(("content-type", "text/json"),), body=body)
    assert view.json is not None and view.json["n"] == float("inf")
    assert "DELETE" in view.override_methods
    refusal = _decided(tmp_path, "text/json", body)
    assert refusal is not None and refusal.status_code == 403 and b"DELETE" in refusal.content
