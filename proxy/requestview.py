"""RequestView: the frozen, mitmproxy-free picture of a request that policies decide on."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl


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

    def cel_context(self, now: float) -> dict[str, Any]:
        """The variables a CEL condition sees."""
        headers: dict[str, str] = {}
        for k, v in self.headers:
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        query: dict[str, str] = {}
        for k, v in self.query:
            query.setdefault(k, v)
        return {
            "agent": self.agent or "",
            "now": int(now),
            "request": {
                "method": self.method,
                "scheme": self.scheme,
                "host": self.host,
                "port": self.port,
                "path": self.path,
                "url": self.url,
                "query": query,
                "headers": headers,
                "body": self.body.decode("utf-8", "replace"),
                "json": self.json,
                "form": self.form,
            },
        }
