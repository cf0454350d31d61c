"""What never reaches the audit log or the agent: credential headers are redacted, injected secrets scrubbed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

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


def redacted_headers_json(headers: Iterable[tuple[str, str]], scrub: SecretScrubber | None = None) -> str:
    """Headers as a JSON list of [name, value] pairs, sensitive values redacted, order and repeats kept."""
    pairs = [[k, redact_value(k, v)] for k, v in headers]
    if scrub:
        pairs = [[k, scrub.text(v)] for k, v in pairs]
    return json.dumps(pairs, ensure_ascii=False)


class SecretScrubber:
    """Replaces every known spelling of every injected secret with that credential's placeholder."""

    def __init__(self, forms: Mapping[str, str]) -> None:
        """`forms` maps each spelling (raw, URL-encoded, base64, hex, …) to the placeholder that replaces it."""
        self._forms = dict(forms)
        ordered = sorted(self._forms, key=len, reverse=True)
        self._text = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._bytes = re.compile(b"|".join(re.escape(f.encode()) for f in ordered)) if ordered else None

    def __bool__(self) -> bool:
        return self._text is not None

    def text(self, value: str) -> str:
        if self._text is None:
            return value
        return self._text.sub(lambda m: self._forms[m.group(0)], value)

    def bytes(self, value: bytes) -> bytes:
        if self._bytes is None or not value:
            return value
        return self._bytes.sub(lambda m: self._forms[m.group(0).decode()].encode(), value)
