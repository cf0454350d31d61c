"""The card a person decides on: what a waiting request will do, in a paragraph, with its undo class and the
compensation undo would plan; every value scrubbed of secrets and cut short."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from ..credentials.redact import SecretScrubber
from ..policy.cel import CelEvalError
from ..printable import shown
from ..undo.plan import Exchange, Scope, UndoRule, header_map

#: How many of a body's fields a card names, and how much of each value it shows (a cut value says its length).
MOST_FIELDS = 20
VALUE_CHARS = 80
#: How much of the URL a card shows, so that a long one cannot push the fields out of a notification.
MOST_URL_CHARS = 300


def _short(value: Any, scrub: SecretScrubber) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    text = shown(scrub.text(text))
    return text if len(text) <= VALUE_CHARS else f"{text[:VALUE_CHARS - 1]}… ({len(text)} characters)"


def key_fields(exchange: Exchange, scrub: SecretScrubber) -> dict[str, str]:
    """The body's top-level fields (JSON object or form), at most MOST_FIELDS, each value short and scrubbed."""
    body = exchange.request_body or b""
    kind = header_map(exchange.request_headers).get("content-type", "").split(";")[0].strip().lower()
    fields: list[tuple[str, Any]] = []
    try:
        if kind.endswith("json") or body[:1] in (b"{", b"["):
            doc = json.loads(body)
            fields = list(doc.items()) if isinstance(doc, dict) else [("(list)", f"{len(doc)} items")]
        elif kind == "application/x-www-form-urlencoded":
            fields = parse_qsl(body.decode(), keep_blank_values=True)
    except (ValueError, UnicodeDecodeError):
        fields = []
    if not fields and body:
        fields = [("(body)", f"{len(body)} bytes of {kind or 'unknown type'}")]
    out = {_short(k, scrub): _short(v, scrub) for k, v in fields[:MOST_FIELDS]}
    if len(fields) > MOST_FIELDS:
        out["…"] = f"{len(fields) - MOST_FIELDS} more"
    return out


def compensation(rule: UndoRule | None, undo_class: str, exchange: Exchange, scrub: SecretScrubber) -> list[str]:
    """The requests undo would send to take this one back, as far as they can be told before the response: each URL
    rendered from the request where it can be, else as its rule writes it."""
    if rule is None:
        return ["nothing: no undo rule is sure to match it before its answer is in"]
    if rule.fidelity == "irreversible" or not rule.undo:
        return [f"nothing: {rule.reason or 'the API offers no way back'}"]
    variables = Scope({**exchange.variables(), "response": {}})
    steps = []
    for template in rule.undo:
        try:
            url = str(template.url.render(variables))
        except CelEvalError:
            url = template.url.source
        steps.append(shown(scrub.text(f"{template.method} {url}"))[:200])
    if rule.preimage is not None:
        steps.append("restoring what was read before it was sent")
    return steps


def card(exchange: Exchange, undo_class: str, rule: UndoRule | None, why: str, scrub: SecretScrubber,
         runs_as: tuple[str, ...] = ()) -> dict[str, Any]:
    """The card for one waiting request (stored with it, sent in notifications, shown by `pending`); `runs_as`: other
    methods a server may run it as (a method override names them)."""
    method, url = exchange.method.upper(), shown(scrub.text(exchange.url))
    url = url if len(url) <= MOST_URL_CHARS else f"{url[:MOST_URL_CHARS]}… ({len(url)} characters)"
    verb = f"{method} (which a server may run as {' or '.join(runs_as)})" if runs_as else method
    fields = key_fields(exchange, scrub)
    undo = compensation(rule, undo_class, exchange, scrub)
    with_fields = f" with {', '.join(f'{k}={v}' for k, v in fields.items())}" if fields else ""
    if undo[0].startswith("nothing"):
        back = f"Undo could not take it back ({undo[0].removeprefix('nothing: ')})."
    else:
        back = f"Undo ({undo_class}) would send {'; then '.join(undo)}."
    summary = f"{verb} {url}{with_fields}. It waits because {why}. {back}"
    return {"method": method, "runs_as": list(runs_as), "url": url, "fields": fields, "undo_class": undo_class,
            "undo_rule": f"{rule.pack}/{rule.name}" if rule else None, "undo": undo, "why": why, "summary": summary}
