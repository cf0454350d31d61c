"""What never reaches the audit log: credential-bearing header values are replaced before a row is written."""

from __future__ import annotations

import json
from collections.abc import Iterable

#: Header names whose values carry credentials (lower case).
SENSITIVE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "x-auth-token",
    "x-goog-api-key", "x-amz-security-token", "x-csrf-token", "private-token", "x-github-token",
})
REDACTED = "<redacted>"


def redact_value(name: str, value: str) -> str:
    """Keep an auth scheme word (`Bearer`, `Basic`) so the log still says what kind of credential it was."""
    if name.lower() not in SENSITIVE_HEADERS:
        return value
    scheme, sep, _ = value.partition(" ")
    if sep and name.lower() in ("authorization", "proxy-authorization") and scheme.isalpha():
        return f"{scheme} {REDACTED}"
    return REDACTED


def redacted_headers_json(headers: Iterable[tuple[str, str]]) -> str:
    """Headers as a JSON list of [name, value] pairs, sensitive values redacted, order and repeats kept."""
    return json.dumps([[k, redact_value(k, v)] for k, v in headers], ensure_ascii=False)
