"""Form bodies: nested values in bracket notation, nulls left out, what no form can carry refused (when the rule is
read if it is a literal, else when the plan is made), and a form whose fields come from data."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, unquote

import pytest

from goex_proxy.undo.forms import FormError, encode_form
from goex_proxy.undo.plan import Exchange, plan
from goex_proxy.undo.rules import check_pack_text


def fields(body: bytes | None) -> list[tuple[str, str]]:
    return parse_qsl((body or b"").decode(), keep_blank_values=True)


@pytest.mark.parametrize(("value", "expected"), [
    ({"name": "Mug", "price": 500}, [("name", "Mug"), ("price", "500")]),
    ({"metadata": {"tier": "gold", "run": "r7"}}, [("metadata[tier]", "gold"), ("metadata[run]", "r7")]),
    ({"items": [{"price": 5, "qty": 2}, {"price": 7}]},
     [("items[0][price]", "5"), ("items[0][qty]", "2"), ("items[1][price]", "7")]),
    ({"a": {"b": {"c": [1, [2, 3]]}}}, [("a[b][c][0]", "1"), ("a[b][c][1][0]", "2"), ("a[b][c][1][1]", "3")]),
    ({"active": True, "deleted": False}, [("active", "true"), ("deleted", "false")]),
    ({"description": None, "name": "x", "meta": {"gone": None}}, [("name", "x")]),    # a null is left out
    ({"metadata": {}, "tags": [], "name": "x"}, [("name", "x")]),                       # empty gives nothing
    ({"amount": 9.5, "n": -3}, [("amount", "9.5"), ("n", "-3")]),
    ({"raw": "é & = +".encode()}, [("raw", "é & = +")]),                                # bytes as UTF-8 text
    ({"m": {1: "one", 2: "two"}}, [("m[1]", "one"), ("m[2]", "two")]),                  # int keys, as CEL maps have
    ({}, []),
])
def test_values_are_encoded_in_bracket_notation(value: object, expected: list[tuple[str, str]]) -> None:
    assert fields(encode_form(value)) == expected


def test_the_body_is_percent_encoded_as_a_browser_sends_it() -> None:
    assert encode_form({"metadata": {"note": "a&b=c d"}, "q": "é"}) == b"metadata%5Bnote%5D=a%26b%3Dc+d&q=%C3%A9"


@pytest.mark.parametrize(("value", "message"), [
    ({"raw": b"\xff\xfe"}, "form field raw: bytes that are not UTF-8 text (base64.encode them)"),
    ({"m": {True: "x"}}, "a form field name is a string or an int, not a boolean True in m"),
    ({"m": {1.5: "x"}}, "a form field name is a string or an int, not a number 1.5 in m"),
    ({"price": float("nan")}, "form field price: nan is not a number a form can carry"),
    ({"items": [{"price": float("inf")}]}, "form field items[0][price]: inf is not a number a form can carry"),
    ({"": "x"}, "a form field needs a name (the map has an empty key)"),
    ("name=x", "a form body is a map of fields, not a string"),
    (["a"], "a form body is a map of fields, not a list"),
    ({"when": object()}, "form field when: a object cannot be sent in a form"),
])
def test_what_no_form_can_carry_is_a_form_error(value: object, message: str) -> None:
    with pytest.raises(FormError) as err:
        encode_form(value)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_data_nested_too_deep_is_refused() -> None:
    deep: dict[str, object] = {"x": "leaf"}
    for _ in range(40):
        deep = {"x": deep}
    with pytest.raises(FormError, match="nests deeper than 32 levels"):
        encode_form(deep)


PACK = """\
version: 1
name: shop
rules:
  - name: update a product
    match: {host: api.shop.example, methods: [POST], path: "/v1/products/*"}
    preimage: {method: GET, url: "${request.url}"}
    class: needs-preimage
    undo:
      - method: POST
        url: "${request.url}"
        form:
          name: "${pre.json.name}"
          active: "${pre.json.active}"
          description: "${pre.json.description}"
          metadata: '${pre.json.metadata.merge(response.json.metadata.filter(k, !(k in pre.json.metadata)).toMap(""))}'
          items:
            - {price: "${pre.json.price}", currency: usd}
          shipping: {address: {city: "${pre.json.city}", line1: fixed}}
          flags: [1, true, 2.5]
  - name: replace a product
    match: {host: api.shop.example, methods: [PUT], path: "/v1/products/*"}
    preimage: {method: GET, url: "${request.url}"}
    class: needs-preimage
    undo:
      - {method: POST, url: "${request.url}", form: '${pre.json.pick(["name", "metadata", "description"])}'}
"""
PRE = {"id": "prod_1", "name": "Mug", "active": False, "description": None, "price": 500, "city": "Oslo",
       "metadata": {"tier": "gold"}}
AFTER = {"id": "prod_1", "name": "Cup", "active": True, "metadata": {"tier": "gold", "agent_run": "r7"}}


def exchange(method: str, pre: dict[str, object] = PRE) -> Exchange:
    return Exchange(method, "https://api.shop.example/v1/products/prod_1", (), b"name=Cup&active=true", 200, (),
                    json.dumps(AFTER).encode(), 200, (), json.dumps(pre).encode())


def rules() -> list:
    found, problems = check_pack_text(PACK, "shop.yaml")
    assert not [p for p in problems if p.severity == "error"], problems
    return found


def test_a_nested_form_in_a_rule_is_read_and_rendered() -> None:
    p = plan("R1", exchange("POST"), rules())
    assert p.verdict == "plan", p.reason
    (step,) = p.steps
    assert ("Content-Type", "application/x-www-form-urlencoded") in step.headers
    assert sorted(fields(step.body)) == sorted([
        ("name", "Mug"), ("active", "false"),               # description is null in the pre-image: left out
        ("metadata[tier]", "gold"), ("metadata[agent_run]", ""),
        ("items[0][price]", "500"), ("items[0][currency]", "usd"),
        ("shipping[address][city]", "Oslo"), ("shipping[address][line1]", "fixed"),
        ("flags[0]", "1"), ("flags[1]", "true"), ("flags[2]", "2.5")])
    assert "description" not in unquote((step.body or b"").decode())


def test_a_form_whose_fields_come_from_data() -> None:
    p = plan("R2", exchange("PUT"), rules())
    assert p.verdict == "plan", p.reason
    assert sorted(fields(p.steps[0].body)) == [("metadata[tier]", "gold"), ("name", "Mug")]


def test_a_value_no_form_can_carry_leaves_the_request_not_planned() -> None:
    p = plan("R3", exchange("POST", {**PRE, "price": float("nan")}), rules())  # the pre-image says `NaN`
    assert p.verdict == "not planned"
    assert p.reason == ("the rule cannot be applied to this response: its form body cannot be sent: form field "
                        "items[0][price]: nan is not a number a form can carry")
    undecodable = PACK.replace('name: "${pre.json.name}"', 'name: \'${base64.decode("/w==")}\'')
    found, _ = check_pack_text(undecodable, "shop.yaml")
    p = plan("R4", exchange("POST"), found)
    assert p.verdict == "not planned"
    assert p.reason.endswith("its form body cannot be sent: form field name: bytes that are not UTF-8 text "
                             "(base64.encode them)"), p.reason


@pytest.mark.parametrize(("form", "line", "col", "message"), [
    ("\n          price: .nan", 12, 18, "'rules[0].undo[0].form' form field price: nan is not a number"),
    ("\n          items:\n            - {price: .inf}", 13, 23, "form field items[0][price]: inf is not a number"),
    ("\n          starts: 2024-01-01", 12, 19, "form field starts: a date cannot be sent in a form (make it a string)"),
    ("\n          raw: !!binary /w==", 12, 16, "form field raw: bytes that are not UTF-8 text"),
    ("\n          '': x", 12, 11, "a form field needs a name"),
    (" [a, b]", 11, 15, "'rules[0].undo[0].form' must be a map of fields, or one ${...} template that gives a map "
                        "(got a list)"),
    (" 'name=${pre.json.name}'", 11, 15, "must be a map of fields, or one ${...} template that gives a map (got text)"),
    (" '${pre.json.name} ${pre.json.id}'", 11, 15, "(got text)"),
])
def test_a_form_that_can_never_be_sent_is_rejected_at_its_line(form: str, line: int, col: int, message: str) -> None:
    text = PACK.replace(PACK[PACK.index("        form:\n") + len("        form:"):PACK.index("  - name: replace")],
                        form + "\n")
    found, problems = check_pack_text(text, "shop.yaml")
    errors = [p for p in problems if p.severity == "error"]
    assert found == [] and len(errors) == 1, problems
    assert (errors[0].line, errors[0].col) == (line, col) and message in errors[0].message, errors[0]
