"""Credentials: which secret is injected, how, and on which hosts, methods and paths only."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..globs import Glob
from ..secretref import SecretRef

if TYPE_CHECKING:
    from .oauth import OAuth2

InjectKind = Literal["header", "basic", "query", "oauth2", "aws_sigv4"]
PLACEHOLDER_PREFIX = "goex-placeholder-"


@dataclass(frozen=True)
class Injection:
    """How a secret goes into a request: a header from a template, HTTP basic auth, a query parameter, an OAuth2
    bearer token the proxy keeps fresh, or an AWS SigV4 signature made again with the real keys."""

    kind: InjectKind
    name: str = "Authorization"     # header name, or query parameter name
    template: str = "Bearer {secret}"
    username: str = ""
    oauth2: OAuth2 | None = None

    def describe(self) -> str:
        if self.kind == "header":
            return f"header {self.name}: {self.template.replace('{secret}', '***')}"
        if self.kind == "basic":
            return f"basic auth as {self.username or '(no user)'}"
        if self.kind == "oauth2" and self.oauth2 is not None:
            return f"OAuth2 bearer token ({self.oauth2.provider.name}), refreshed by the proxy"
        if self.kind == "aws_sigv4":
            return "AWS SigV4, re-signed with the real keys"
        return f"query parameter {self.name}"


@dataclass(frozen=True)
class Credential:
    """A secret bound to hosts (and optionally methods and paths): it is injected there and nowhere else."""

    name: str
    secret: SecretRef
    hosts: tuple[Glob, ...]
    inject: Injection
    methods: frozenset[str] | None = None
    paths: tuple[Glob, ...] | None = None
    env: tuple[str, ...] = ()
    schemes: frozenset[str] = frozenset({"https"})

    @property
    def placeholder(self) -> str:
        """What the agent holds instead of the secret (and what echoes of the secret are replaced with)."""
        return f"{PLACEHOLDER_PREFIX}{self.name}"

    def binds(self, host: str, method: str, path: str) -> bool:
        if not any(h.matches(host) for h in self.hosts):
            return False
        if self.methods is not None and method not in self.methods:
            return False
        return self.paths is None or any(p.matches(path) for p in self.paths)

    def secret_values(self, stored: str) -> list[str]:
        """The secret strings inside what is stored: the value itself, an OAuth2 token set's tokens, AWS keys."""
        if self.inject.kind == "oauth2":
            from .oauth import TokenSet

            return TokenSet.loads(stored).values()
        if self.inject.kind == "aws_sigv4":
            from .sigv4 import AwsKeys

            try:
                return AwsKeys.loads(stored).values()
            except ValueError:
                return [stored]
        return [stored]

    def forms(self, stored: str) -> list[str]:
        """Every spelling of every secret in `stored` that could carry it: raw, URL-encoded, base64, hex, basic auth."""
        spellings: set[str] = set()
        for secret in self.secret_values(stored):
            spellings |= self.spellings(secret)
        return sorted(spellings, key=len, reverse=True)

    def spellings(self, secret: str) -> set[str]:
        """The spellings of one secret string (at least 4 characters each)."""
        from urllib.parse import quote, quote_plus

        raw = secret.encode()
        # Also as Python's quote() leaves '/' and as JavaScript's encodeURIComponent leaves ! ' ( ) *.
        escaped = {quote(secret, safe=""), quote_plus(secret), quote(secret), quote(secret, safe="!'()*")}
        escaped |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), e) for e in escaped}
        escaped |= {quote(e, safe="") for e in escaped}  # encoded twice (a URL inside a query parameter)
        in_json = json.dumps(secret)[1:-1]
        # Go's encoding/json writes & < > as \u0026 \u003c \u003e; HTML escapes & < > " ' as entities.
        go_json = in_json.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
        # .NET's System.Text.Json escapes those and ' + " as well, in upper case (\u002B).
        dotnet_json = json.dumps(secret)[1:-1].replace('\\"', '"')
        for c in "&<>'+\"":
            dotnet_json = dotnet_json.replace(c, f"\\u{ord(c):04X}")
        import html  # here: commands that never scrub (`log`, `show`) do not pay for its entity table

        in_html = html.escape(secret, quote=True)
        spellings = {secret, *escaped, raw.hex(), raw.hex().upper(), in_json, in_json.replace("/", "\\/"),
                     json.dumps(secret, ensure_ascii=True)[1:-1], go_json, dotnet_json, in_html,
                     in_html.replace("&#x27;", "&#39;"), in_html.replace("&#x27;", "&#039;")}
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            whole = encode(raw).decode()
            spellings.update({whole, whole.rstrip("=")})
            # Inside a longer base64 text (`base64("Bearer " + secret)`), the secret shows at one of three
            # alignments; at each, the characters made only of the secret's bits do not depend on the bytes around
            # it: from the first whose 6 bits all come after the `shift` bytes before it, to the last whose bits all
            # come from the secret.
            for shift in (0, 1, 2):
                inner = encode(b"\0" * shift + raw).decode()[-(-8 * shift // 6):8 * (shift + len(raw)) // 6]
                if len(inner) >= 8:
                    spellings.add(inner)
        # As Python quotes text, which mitmproxy's errors do with what an upstream sent (`unknown transfer-encoding
        # header: '...'`, `b'...'`): a backslash, a byte beyond ASCII or a character it cannot print escaped, and a
        # quote escaped or not as the rest of the quoted text decides (`'` is escaped when `"` is in it too).
        for quoted in (repr(secret + "'\"")[1:-4], repr(raw + b"'\"")[2:-4]):
            spellings.update({quoted, quoted.replace("\\'", "'")})
        if self.inject.kind == "basic":
            pair = base64.b64encode(f"{self.inject.username}:{secret}".encode()).decode()
            spellings.update({pair, pair.rstrip("=")})
        return {s for s in spellings if len(s) >= 4}
