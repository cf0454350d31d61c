"""Template functions: undo expressions call string, encoder, map and hash functions over the real undo variables;
policy conditions keep to CEL's own, and an unknown function or namespace is refused when the rule is read."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from goex_proxy.policy.cel import CelEvalError, CelSyntaxError, compile_condition, compile_expression
from goex_proxy.undo.plan import UNDO_VARIABLES, Exchange, plan
from goex_proxy.undo.rules import check_pack_text, parse_template

PRE = {"id": "prod_42", "name": "Mug", "price": 9.5, "created_at": 1700000000,
       "metadata": {"tier": "gold", "owner": "ops"}}
AFTER = {"id": "prod_42", "name": "  Tea Cup  ", "price": 12,
         "metadata": {"tier": "gold", "owner": "ops", "agent_run": "r7", "agent_note": "x"}}
EXCHANGE = Exchange("PATCH", "https://api.shop.example/v1/products/prod_42?expand=metadata",
                    (("Content-Type", "application/json"), ("X-Request-Id", "abc-123")),
                    json.dumps({"name": "Tea Cup", "metadata": {"agent_run": "r7", "agent_note": "x"}}).encode(),
                    200, (("ETag", '"v2"'),), json.dumps(AFTER).encode(),
                    200, (("ETag", '"v1"'),), json.dumps(PRE).encode())
VARIABLES = EXCHANGE.variables()


def render(text: str) -> object:
    return parse_template(text).render(VARIABLES)


@pytest.mark.parametrize(("template", "expected"), [
    # strings
    ("${response.json.name.trim()}", "Tea Cup"),
    ("${response.json.name.trim().lowerAscii()}", "tea cup"),
    ("${request.segments[1].upperAscii()}", "PRODUCTS"),
    ("${request.path.substring(13)}", "prod_42"),
    ("${request.path.substring(4, 12)}", "products"),
    ('${request.path.replace("/", ".")}', ".v1.products.prod_42"),
    ('${request.path.replace("/", ".", 1)}', ".v1/products/prod_42"),
    ('${request.path.split("/")}', ["", "v1", "products", "prod_42"]),
    ('${request.segments.join("|")}', "v1|products|prod_42"),
    ('${request.path.indexOf("prod")}', 4),
    ('${request.path.lastIndexOf("prod")}', 13),
    ("${request.path.charAt(1)}", "v"),
    ('products/${request.segments[2].substring(request.segments[2].indexOf("_") + 1)}', "products/42"),
    # format
    ('${"%s-%d".format([pre.json.name, pre.json.created_at])}', "Mug-1700000000"),
    ('${"%.2f %f".format([pre.json.price, 1])}', "9.50 1.000000"),
    ('${"%x %X %o %b %%".format([255, "hi", 8, 5])}', "ff 6869 10 101 %"),
    ('${"%s %s %s".format([true, null, pre.json.metadata])}', 'true null {"owner":"ops","tier":"gold"}'),
    ('${"%e".format([1234.5])}', "1.234500e+03"),
    # encoders
    ("${base64.encode(pre.body)}", base64.b64encode(json.dumps(PRE).encode()).decode()),
    ('${base64.encode("hi")}', "aGk="),
    ('${base64.decode("aGk=")}', b"hi"),
    ('${base64.decode("aGk")}', b"hi"),  # padding may be left out, as cel-go allows
    ('${json.encode(pre.json.metadata)}', '{"owner":"ops","tier":"gold"}'),  # keys sorted, no spaces
    ('${json.encode([1, "a", true, null, 2.5])}', '[1,"a",true,null,2.5]'),
    ("${json.decode(pre.text).id}", "prod_42"),
    ("${json.decode(pre.body).metadata.tier}", "gold"),
    # maps
    ('${pre.json.omit(["id", "created_at", "metadata"])}', {"name": "Mug", "price": 9.5}),
    ('${pre.json.pick(["name", "price", "missing"])}', {"name": "Mug", "price": 9.5}),
    ('${pre.json.metadata.merge({"tier": "silver", "new": "1"})}', {"tier": "silver", "owner": "ops", "new": "1"}),
    ('${["a", "b"].toMap("")}', {"a": "", "b": ""}),
    ('${[1, 2].toMap(true)}', {1: True, 2: True}),
    # the example: clear the metadata keys the agent added, keep the rest as they were
    ('${pre.json.metadata.merge(response.json.metadata.filter(k, !(k in pre.json.metadata)).toMap(""))}',
     {"tier": "gold", "owner": "ops", "agent_run": "", "agent_note": ""}),
    # hashing, math
    ("${sha256(pre.body)}", hashlib.sha256(json.dumps(PRE).encode()).hexdigest()),
    ('${sha256("abc")}', "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    ('${base64.encode(md5("abc"))}', "kAFQmDzST7DWlj99KOF/cg=="),
    ("${base64.encode(md5(pre.body))}", base64.b64encode(hashlib.md5(json.dumps(PRE).encode()).digest()).decode()),
    ("${math.greatest([pre.json.created_at, 5])}", 1700000000),
    ("${math.abs(-3)}", 3),
    # text around a template: values as text
    ("etag=${sha256(pre.headers.etag).substring(0, 8)}", "etag=" + hashlib.sha256(b'"v1"').hexdigest()[:8]),
])
def test_a_template_function_gives_its_value(template: str, expected: object) -> None:
    assert render(template) == expected


@pytest.mark.parametrize(("template", "message"), [
    ('${"%d".format([pre.json.name])}', "format: %d needs an int, not string"),
    ('${"%d %d".format([1])}', "format: %d at character 4 has no argument (1 given)"),
    ('${"%s".format([1, 2])}', "format: 2 arguments for 1 verbs"),
    ('${"50% off".format([])}', "format: '%' at character 3 starts no verb (write %% for a percent sign)"),
    ('${"%q".format([1])}', "format: unknown verb '%q'"),
    ('${"%s".format(pre.json.name)}', "format takes a list of arguments, not string"),
    ("${pre.json.price.trim()}", "trim takes a string, not double"),
    ('${pre.json.omit("id")}', "omit takes a list of keys, not string"),
    ('${pre.json.name.pick(["a"])}', "pick takes a map, not string"),
    ("${pre.json.metadata.merge(pre.json.name)}", "merge takes a map to merge in, not string"),
    ("${[1.5].toMap(1)}", "toMap: a map key is a string, int or bool, not double"),
    ("${json.encode(pre.body)}", "json.encode: a bytes value has no JSON form"),
    ('${json.decode("{")}', "json.decode: not JSON"),
    ('${base64.decode("!!")}', "base64.decode: not base64 text"),
    ("${sha256(pre.json.created_at)}", "sha256 takes a bytes or string, not int"),
    ("${request.path.substring(0, 999)}", "substring: [0:999] out of range for string of length 20"),
])
def test_a_template_function_fails_with_a_clear_one_line_message(template: str, message: str,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CelEvalError) as err:
        render(template)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert capfd.readouterr().err == ""  # the engine's own log line about the exception is kept quiet


@pytest.mark.parametrize("source", ['base64.encode(pre.body) != ""', 'json.encode(pre.json) != ""',
                                    "math.abs(-1) == 1", 'json.decode(json.encode(pre.json)) == pre.json'])
def test_namespaces_are_not_unknown_variables(source: str) -> None:
    assert compile_condition(source, UNDO_VARIABLES).evaluate(VARIABLES) is True


@pytest.mark.parametrize(("source", "message", "line", "col"), [
    ("json.nope(pre.json)", "calls unknown function 'json.nope'", 1, 1),
    ("request.path.frob()", "calls unknown function 'frob'", 1, 14),
    ("pre.json.name == 'a' &&\n  pre.json.omitt(['id']) == {}", "calls unknown function 'omitt'", 2, 12),
    ("request.json.encode()", "calls unknown function 'encode'", 1, 14),  # json.encode is no method of a value
    ("json.x == 1", "reads unknown variable 'json'", 1, 1),               # a namespace only before a call
    ('"json.encode(" + json', "reads unknown variable 'json'", 1, 1),    # a call in a string literal is no call
])
def test_unknown_functions_and_namespaces_are_refused_when_compiled(source: str, message: str, line: int,
                                                                     col: int) -> None:
    with pytest.raises(CelSyntaxError) as err:
        compile_expression(source, UNDO_VARIABLES)
    assert message in str(err.value)
    if "function" in message:
        assert (err.value.line, err.value.col) == (line, col)


def test_policy_conditions_keep_to_cels_own_functions() -> None:
    """A decision's condition gets no template functions, so it is evaluated exactly as before."""
    plain = compile_condition('request.json.channel == "C1"')
    assert plain.functions is None
    assert compile_condition("request.path.trim() != ''", UNDO_VARIABLES).functions is not None
    with pytest.raises(CelSyntaxError, match="unknown variable 'base64'"):
        compile_condition('base64.encode(request.body) != ""')
    undo = compile_condition('response.json.name.trim() == "Tea Cup"', UNDO_VARIABLES)
    assert undo.functions is not None and set(undo.functions) == {"trim"}  # only what it calls is handed over
    assert undo.evaluate(VARIABLES) is True


PACK = """\
version: 1
name: shop
rules:
  - name: rename a product
    match: {host: api.shop.example, methods: [PATCH], path: "/v1/products/*"}
    preimage: {method: GET, url: "${request.url}"}
    when: 'request.path.split("/").size() == 4 && request.segments[2].startsWith("prod_")'
    effective: 'response.status == 200 && response.json.name.trim() == request.json.name'
    class: needs-preimage
    guard:
      read: {method: GET, url: "${request.base_url}"}
      expect: 'sha256(json.encode(read.json)) == sha256(json.encode(response.json))'
    undo:
      - method: PATCH
        url: "${request.base_url}"
        headers: {X-Undo-Of: '${request.headers["x-request-id"].upperAscii()}'}
        json: '${pre.json.pick(["name"]).merge({"metadata": pre.json.metadata.merge(
          response.json.metadata.filter(k, !(k in pre.json.metadata)).toMap(""))})}'
        success: 'string(response.status).startsWith("2")'
"""


def test_a_rule_uses_template_functions_in_every_expression() -> None:
    rules, problems = check_pack_text(PACK, "shop.yaml")
    assert not [p for p in problems if p.severity == "error"], problems
    p = plan("R1", EXCHANGE, rules)
    assert p.verdict == "plan", p.reason
    (step,) = p.steps
    assert ("X-Undo-Of", "ABC-123") in step.headers
    assert json.loads(step.body or b"") == {"name": "Mug", "metadata": {"tier": "gold", "owner": "ops",
                                                                        "agent_run": "", "agent_note": ""}}
    assert p.guard_expect is not None
    assert p.guard_expect.evaluate({**p.variables, "read": {"status": 200, "json": AFTER}}) is True
    assert p.guard_expect.evaluate({**p.variables, "read": {"status": 200, "json": {**AFTER, "name": "x"}}}) is False
    assert step.success is not None and step.success.evaluate({**p.variables, "response": {"status": 204}}) is True


def test_an_unknown_function_in_a_pack_is_an_error_at_its_place() -> None:
    text = PACK.replace("response.json.name.trim()", "response.json.name.strip()")
    rules, problems = check_pack_text(text, "shop.yaml")
    errors = [str(p) for p in problems if p.severity == "error"]
    assert rules == [] and len(errors) == 1
    assert errors[0].startswith("shop.yaml:8:") and "calls unknown function 'strip'" in errors[0], errors
