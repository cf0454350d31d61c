"""RequestView: the frozen, mitmproxy-free picture of a request that policies decide on."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def canonical_path(raw: str) -> str | None:
    """The path as policies match it, or None when servers could read it more than one way.

    Escapes of unreserved characters are decoded (`/%61dmin` is `/admin`, RFC 3986 6.2.2.2) and other escapes are
    upper-cased; a path with `.` or `..` segments, empty segments (`//`, except a trailing `/`) or a backslash, after
    decoding, is ambiguous: servers differ in how they resolve it, so it is refused rather than guessed at.
    """
    if not raw.startswith("/"):
        return raw
    path = _ESCAPE.sub(lambda m: chr(int(m[1], 16)) if chr(int(m[1], 16)) in _UNRESERVED else f"%{m[1].upper()}", raw)
    segments = path.split("/")[1:]
    if "\\" in path or "%5C" in path or any(seg in (".", "..") for seg in segments) or "" in segments[:-1]:
        return None
    return path


@dataclass(frozen=True)
class RequestView:
    """What the policy engine may look at: who asks, for what, with which body."""

    agent: str | None
    method: str
    scheme: str
    host: str
    port: int
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)

    @property
    def url(self) -> str:
        default = {"http": 80, "https": 443}.get(self.scheme)
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        query = "&".join(f"{k}={v}" for k, v in self.query)
        return f"{self.scheme}://{netloc}{self.path}" + (f"?{query}" if query else "")

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    @cached_property
    def json(self) -> Any:
        """The body parsed as JSON, or None when it is not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    @cached_property
    def form(self) -> dict[str, str]:
        content_type = (self.header("content-type") or "").lower()
        if "application/x-www-form-urlencoded" not in content_type:
            return {}
        try:
            return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return {}

    def _request_fields(self) -> dict[str, Callable[[], Any]]:
        return {
            "method": lambda: self.method,
            "scheme": lambda: self.scheme,
            "host": lambda: self.host,
            "port": lambda: self.port,
            "path": lambda: self.path,
            "url": lambda: self.url,
            "query": self._query_map,
            "headers": self._header_map,
            "body": lambda: self.body.decode("utf-8", "replace"),
            "json": lambda: self.json,
            "form": lambda: self.form,
        }

    def _header_map(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for k, v in self.headers:
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        return headers

    def _query_map(self) -> dict[str, str]:
        query: dict[str, str] = {}
        for k, v in self.query:
            query.setdefault(k, v)
        return query

    def cel_context(self, now: float, paths: Iterable[tuple[str, ...]] | None = None) -> dict[str, Any]:
        """The variables a CEL condition sees: all of them, or only the subtrees on `paths`."""
        roots: dict[str, Callable[[], Any]] = {"agent": lambda: self.agent or "", "now": lambda: int(now)}
        fields = self._request_fields()
        if paths is None:
            paths = [("agent",), ("now",), ("request",)]
        out: dict[str, Any] = {}
        for path in sorted(set(paths), key=len):
            if path[0] in roots:
                out[path[0]] = roots[path[0]]()
            elif len(path) == 1:
                out["request"] = _Whole((name, make()) for name, make in fields.items())
            else:
                request = out.setdefault("request", {})
                if not isinstance(request, _Whole) and path[1] in fields:
                    _graft(request, path[1], fields[path[1]](), path[2:])
        return out


class _Whole(dict):  # type: ignore[type-arg]
    """A subtree copied in full, so that longer paths into it add nothing."""


_MISSING = object()


def _graft(target: dict[str, Any], key: str, value: Any, rest: tuple[str, ...]) -> None:
    """Copy into `target[key]` the part of `value` that the selector chain `rest` reaches (all of it if empty)."""
    current = target.get(key, _MISSING)
    if isinstance(current, _Whole) or (current is not _MISSING and not isinstance(current, dict)):
        return
    if not rest or not isinstance(value, dict):
        target[key] = _Whole(value) if isinstance(value, dict) else value
        return
    sub = target.setdefault(key, {})
    if rest[0] in value:
        _graft(sub, rest[0], value[rest[0]], rest[1:])
