"""Host and path globs (`*`, `**`, `?`, `{a,b}`) compiled once into expressions that match in time linear in the text:
RE2 for a glob with two wildcards or more (Python's `re` backtracks: `/api/*-*-*-*-x` took 32 s on one 405-byte
path), Python's `re` for the rest, where it cannot backtrack more than once over the text and is ten times faster
per call than RE2's binding."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import re2

#: Characters written into an expression as they are; every other ASCII character is escaped (RE2 refuses escapes of
#: letters, digits and spaces, and needs them of its own syntax).
_PLAIN = frozenset(string.ascii_letters + string.digits + " _")


def _escape(c: str) -> str:
    return c if c in _PLAIN or ord(c) > 127 else "\\" + c


@dataclass(frozen=True)
class Glob:
    """A compiled glob; `literal` is set when the pattern has no wildcard at all."""

    pattern: str
    regex: Any  # a compiled expression (see `_compile`)
    literal: str | None

    def matches(self, text: str) -> bool:
        if self.literal is not None:
            return text == self.literal
        return self.regex.fullmatch(text) is not None

    def matches_path(self, path: str, fold_case: bool = False, optional_slash: bool = False) -> bool:
        """Whether this path glob matches `path` as a router would that ignores case (`fold_case`, RE2's Unicode
        simple case folding) or treats `/a` and `/a/` as one route (`optional_slash`, Express's non-strict routing)."""
        slash = optional_slash and len(path) > 1
        if slash:
            path = path.removesuffix("/") + "/"  # one spelling; the expression's optional last '/' reads it both ways
        fold = fold_case and not (self._lower_ascii and path.isascii() and path == path.lower())
        if not (fold or slash):
            return self.matches(path)
        if self.literal is not None and self.literal.isascii() and path.isascii():  # folding is lower-casing there
            same = (lambda a, b: a.lower() == b.lower()) if fold else str.__eq__
            return same(path, self.literal) or (slash and same(path[:-1], self.literal))
        return self._lenient(fold, slash).fullmatch(path) is not None

    @cached_property
    def _lower_ascii(self) -> bool:
        """Whether folding case changes nothing this glob matches in an ASCII lower-case path."""
        return self.pattern.isascii() and self.pattern == self.pattern.lower()

    def _lenient(self, fold: bool, slash: bool) -> Any:
        """The expression folding case and/or taking an optional last '/', compiled on first use."""
        key = f"_lenient_{fold:d}{slash:d}"
        if key not in self.__dict__:
            body = "(?:" + self.regex.pattern + ")/?" if slash else self.regex.pattern
            # Unicode case folding as RE2 does it (`re` folds some characters otherwise), unless folding is ASCII's.
            self.__dict__[key] = re2.compile("(?i)" + body) if fold and not body.isascii() else _compile(
                "(?i)" + body if fold else body, _could_backtrack(self.pattern, "/"))
        return self.__dict__[key]


def _could_backtrack(pattern: str, separator: str) -> bool:
    """Whether `re` could backtrack more than linearly on this glob: two `**`, two wildcards in one segment (their
    matches overlap: `*-*`), or a wildcard inside `{...}`. A `*` stays within its segment, so stars in different
    segments, and one `**` before them, are each tried once per place their literal context matches."""
    if pattern.count("**") > 1 or re.search(r"\{[^}]*\*", pattern):
        return True
    return any(segment.replace("**", "*").count("*") > 1 for segment in pattern.split(separator))


def _compile(body: str, backtracks: bool = True) -> Any:
    """RE2 for an expression `re` could backtrack on, else `re` (ten times faster per call than RE2's binding)."""
    return re2.compile(body) if backtracks else re.compile(body)


def _translate(pattern: str, separator: str) -> str:
    """Translate one glob to a regex body; `*` stops at `separator`, `**` does not."""
    out: list[str] = []
    i, depth = 0, 0
    one = f"[^{_escape(separator)}]"
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                # "/**/" also matches a single "/": a/**/b covers a/b.
                if separator == "/" and pattern.startswith("/", i) and (not out or out[-1].endswith("/")):
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append(one + "*")
        elif c == "?":
            out.append(one)
        elif c == "{":
            depth += 1
            out.append("(?:")
        elif c == "}":
            if depth == 0:
                raise ValueError(f"has a '}}' with no matching '{{' at position {i + 1}")
            depth -= 1
            out.append(")")
        elif c == "," and depth > 0:
            out.append("|")
        elif c in "[]":
            raise ValueError(f"uses '{c}' at position {i + 1}; character classes are not supported")
        else:
            out.append(_escape(c))
        i += 1
    if depth:
        raise ValueError("has a '{' that is never closed")
    return "".join(out)


def compile_path(pattern: str) -> Glob:
    """Compile a path glob: `*` matches inside one segment, `**` across segments, `{a,b}` alternatives."""
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ValueError(f"must be a path glob starting with '/' (got {pattern!r})")
    literal = None if any(c in pattern for c in "*?{}") else pattern
    return Glob(pattern, _compile(_translate(pattern, "/"), _could_backtrack(pattern, "/")), literal)


def compile_host(pattern: str) -> Glob:
    """Compile a host glob, case-insensitively: `*` matches one DNS label, `**` any number of labels."""
    if not isinstance(pattern, str) or not pattern or any(c in pattern for c in "/: "):
        raise ValueError(f"must be a host name or host glob like '*.example.com' (got {pattern!r})")
    pattern = pattern.lower().rstrip(".")
    literal = None if any(c in pattern for c in "*?{}") else pattern
    return Glob(pattern, _compile(_translate(pattern, "."), _could_backtrack(pattern, ".")), literal)
