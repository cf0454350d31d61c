"""Form bodies with nested values, in bracket notation (`a[b]=1`, `items[0][price]=5`), and what a rule's form cannot be."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlencode

#: How deep a form's maps and lists may nest (deeper data from an upstream is refused, not recursed into).
MAX_DEPTH = 32
#: The message for a rule's `form:` that is neither a map of fields nor one template giving one.
NOT_A_FORM = "must be a map of fields, or one ${...} template that gives a map"


class FormError(ValueError):
    """A value that cannot be sent as an application/x-www-form-urlencoded body; the message is one line."""


def encode_form(value: Any) -> bytes:
    """A map as a form body: nested maps and lists in brackets (`metadata[tier]=gold`, `items[0][price]=5`, the
    Stripe, Rails and PHP convention), true and false as `true` and `false`, a null field left out, an empty map or
    list giving nothing, bytes sent as their UTF-8 text. FormError says what cannot be sent, and which field."""
    if not isinstance(value, dict):
        raise FormError(f"a form body is a map of fields, not {_kind(value)}")
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        name = _key(key, "")
        if not name:
            raise FormError("a form field needs a name (the map has an empty key)")
        _fields(name, item, pairs, 1)
    return urlencode(pairs).encode("ascii")


def _fields(name: str, value: Any, out: list[tuple[str, str]], depth: int) -> None:
    if isinstance(value, dict | list | tuple):
        if depth > MAX_DEPTH:
            raise FormError(f"form field {name}: nests deeper than {MAX_DEPTH} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _fields(f"{name}[{_key(key, name)}]", item, out, depth + 1)
    elif value is not None:
        out.append((name, scalar(value, name)))


def _key(key: Any, parent: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    where = f" in {parent}" if parent else ""
    raise FormError(f"a form field name is a string or an int, not {_kind(key)} {key!r}{where}")


def scalar(value: Any, name: str) -> str:
    """One field's value as text; FormError for a value no form can carry."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FormError(f"form field {name}: {value} is not a number a form can carry")
        return repr(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise FormError(f"form field {name}: bytes that are not UTF-8 text (base64.encode them)") from None
    raise FormError(f"form field {name}: a {_kind(value)} cannot be sent in a form (make it a string)")


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", bytes: "bytes", list: "a list",
             tuple: "a list", dict: "a map", type(None): "null"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


def form_problems(raw: Any, pos: tuple[int, int]) -> list[tuple[tuple[int, int], str]]:
    """What a rule's `form:` (YAML, its strings templates) holds that can never be sent, each with its position:
    a value that is neither a map nor a string (a string is one template, which the reader checks), an empty field
    name, and a literal no form can carry (`.nan`, `!!binary` that is not UTF-8, an unquoted date). Positions come
    from the YAML reader's maps and lists (`value_pos`, `item_pos`) where they have them."""
    if isinstance(raw, str):
        return []
    if not isinstance(raw, dict):
        return [(pos, f"{NOT_A_FORM} (got {_kind(raw)})")]
    found: list[tuple[tuple[int, int], str]] = []
    for key in raw:
        if key == "":
            found.append((getattr(raw, "key_pos", {}).get(key, pos), "a form field needs a name (the key is empty)"))
    _literals(raw, "", pos, found, 1)
    return found


def _literals(value: Any, name: str, pos: tuple[int, int], found: list[tuple[tuple[int, int], str]], depth: int) -> None:
    if isinstance(value, dict | list):
        if depth > MAX_DEPTH:
            found.append((pos, f"form field {name}: nests deeper than {MAX_DEPTH} levels"))
            return
        where = getattr(value, "value_pos", {}) if isinstance(value, dict) else dict(enumerate(getattr(value, "item_pos", [])))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _literals(item, f"{name}[{key}]" if name else str(key), where.get(key, pos), found, depth + 1)
    elif not isinstance(value, str) and value is not None:  # a string is a template or text: always sendable
        try:
            scalar(value, name)
        except FormError as exc:
            found.append((pos, str(exc)))
