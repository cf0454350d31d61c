"""The console's HTML: Jinja2 templates (autoescaped: every recorded value is text), bodies shown by content type."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader

from ..printable import shown

TEMPLATES = Path(__file__).parent / "templates"
HEX_BYTES = 512


def _seen(value: object) -> str:
    """A recorded value as a person may safely read it: control, invisible and bidirectional characters written as
    escapes (line breaks kept); HTML escaping is the templates' (autoescape)."""
    return "\n".join(shown(line) for line in str(value).split("\n"))


#: How a recorded time that is no time shows (as `goex-proxy log` shows it).
NOT_A_TIME = "(not a time)"


def _when(ts: object) -> str:
    """A recorded time, local, to the second; an edited one that is no time a clock shows (text, 1e300, bytes) as
    such: it took the whole log page, its live stream and the row's page down with a 500."""
    if not ts:
        return "-"
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return NOT_A_TIME
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, ValueError, OSError):
        return NOT_A_TIME


def _ms(duration: object) -> str:
    """A recorded duration in whole ms; one that is no number (edited, or `layout.unreadable`: a duration left to
    its end, which was edited) as the text it is, where formatting it as a number answered 500."""
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        return f"{duration:.0f} ms"
    return _seen(duration)


def headers_of(text: str | None) -> list[tuple[str, str]]:
    try:
        found = json.loads(text or "[]")
    except ValueError:
        return []
    return [(str(p[0]), str(p[1])) for p in found if isinstance(p, list) and len(p) == 2] if isinstance(found, list) \
        else []


def body_view(body: bytes | str | None, size: int | None, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """A recorded body as the page shows it: `kind` (empty, json, text, hex), the text, and a note on its size."""
    if isinstance(body, str):  # a damaged row read leniently: why its body cannot be read (`layout.unreadable`)
        return {"kind": "text", "text": _seen(body), "note": "cannot be read"}
    if not body:
        return {"kind": "empty", "text": "(empty)" if not size else f"({size} bytes, not stored)", "note": ""}
    whole = size if isinstance(size, int) and not isinstance(size, bool) else None  # an edited one: any type
    note = f"{whole} bytes in all; the first {len(body)} stored" if whole and whole > len(body) else f"{len(body)} bytes"
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "").lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        shown_bytes = body[:HEX_BYTES]
        lines = [f"{i:08x}  {shown_bytes[i:i + 16].hex(' ')}" for i in range(0, len(shown_bytes), 16)]
        more = f" (the first {HEX_BYTES} shown)" if len(body) > HEX_BYTES else ""
        return {"kind": "hex", "text": "\n".join(lines), "note": f"binary, {note}{more}"}
    if "json" in content_type or text.lstrip()[:1] in ("{", "["):
        try:
            return {"kind": "json", "text": _seen(json.dumps(json.loads(text), indent=2, ensure_ascii=False)),
                    "note": f"JSON, {note}"}
        except (ValueError, RecursionError):  # not JSON, or nested past what Python parses: shown as the text it is
            pass
    return {"kind": "text", "text": _seen(text), "note": f"{content_type or 'text'}, {note}"}


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters["seen"] = _seen
    env.filters["when"] = _when
    env.filters["ms"] = _ms
    return env
