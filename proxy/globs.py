"""Host and path globs (`*`, `**`, `?`, `{a,b}`) compiled once into expressions that match in time linear in the text:
RE2 for a glob with two wildcards or more (Python's `re` backtracks: `/api/*-*-*-*-x` took 32 s on one 405-byte
path), Python's `re` for the rest, where it cannot backtrack more than once over the text and is ten times faster
per call than RE2's binding."""

from __future__ import annotations

import functools
import heapq
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .hostkey import host_key

#: Characters written into an expression as they are; every other ASCII character is escaped (RE2 refuses escapes of
#: letters, digits and spaces, and needs them of its own syntax).
_PLAIN = frozenset(string.ascii_letters + string.digits + " _")


def _escape(c: str) -> str:
    return c if c in _PLAIN or ord(c) > 127 else "\\" + c


@dataclass(frozen=True)
class Glob:
    """A compiled glob; `literal` is set when the pattern has no wildcard at all.

    The expression is compiled on first use (`regex`): compiling took most of the second a 10,000-rule policy needed
    to load, and a path glob made of literal segments, `*` segments and a last `**` (`simple`) is matched segment by
    segment without one."""

    pattern: str
    separator: str   # '/' for a path glob, '.' for a host glob
    literal: str | None
    simple: tuple[str, ...] | None = None  # a simple path glob's segments, the last one possibly '**'

    @cached_property
    def body(self) -> str:
        """The expression's text (see `_translate`)."""
        return _translate(self.pattern, self.separator)

    @cached_property
    def regex(self) -> Any:
        """The compiled expression (see `_compile`)."""
        return _compile(self.body, _could_backtrack(self.pattern, self.separator))

    def matches(self, text: str) -> bool:
        if self.literal is not None:
            return text == self.literal
        if self.simple is not None:
            return _simple_match(self.simple, text)
        if self._needle and self._needle not in text:
            return False
        return self.regex.fullmatch(text) is not None

    @cached_property
    def _needle(self) -> str:
        """The longest run of literal text outside braces, without a '/' at either end: a text the glob matches holds
        it, read as written, in any case (lower-cased, for ASCII) or with or without a last '/'. Looking for it first
        spares most texts the expression (RE2's binding costs microseconds a call)."""
        runs = re.split(r"[*?]|\{[^}]*\}", self.pattern) if "{" not in self.pattern or self._flat_braces else []
        return max((run.strip("/") for run in runs), key=len, default="")

    @cached_property
    def _flat_braces(self) -> bool:
        """Whether every brace in the pattern closes before another opens (no nesting)."""
        return re.fullmatch(r"[^{}]*(?:\{[^{}]*\}[^{}]*)*", self.pattern) is not None

    def matches_path(self, path: str, fold_case: bool = False, optional_slash: bool = False) -> bool:
        """Whether this path glob matches `path` as a router would that ignores case (`fold_case`, RE2's Unicode
        simple case folding) or treats `/a` and `/a/` as one route (`optional_slash`, Express's non-strict routing)."""
        needle = self._needle
        if needle and needle not in path:   # first: most paths a lenient reading is tried on lack it
            if not fold_case or (path.isascii() and needle.isascii() and needle.lower() not in path.lower()):
                return False
        slash = optional_slash and len(path) > 1
        if slash:
            path = path.removesuffix("/") + "/"  # one spelling; the expression's optional last '/' reads it both ways
        fold = fold_case and not (self._lower_ascii and path.isascii() and path == path.lower())
        if not (fold or slash):
            return self.matches(path)
        if self.literal is not None and self.literal.isascii() and path.isascii():  # folding is lower-casing there
            same = (lambda a, b: a.lower() == b.lower()) if fold else str.__eq__
            return same(path, self.literal) or (slash and same(path[:-1], self.literal))
        if self.simple is not None and self.pattern.isascii() and path.isascii():
            segments = self._simple_lower if fold else self.simple
            text = path.lower() if fold else path
            return _simple_match(segments, text) or (slash and _simple_match(segments, text[:-1]))
        return self._lenient(fold, slash).fullmatch(path) is not None

    @cached_property
    def _simple_lower(self) -> tuple[str, ...]:
        return tuple(s.lower() for s in self.simple or ())

    @cached_property
    def _lower_ascii(self) -> bool:
        """Whether folding case changes nothing this glob matches in an ASCII lower-case path."""
        return self.pattern.isascii() and self.pattern == self.pattern.lower()

    def _lenient(self, fold: bool, slash: bool) -> Any:
        """The expression folding case and/or taking an optional last '/', compiled on first use."""
        key = f"_lenient_{fold:d}{slash:d}"
        if key not in self.__dict__:
            body = "(?:" + self.body + ")/?" if slash else self.body
            # Unicode case folding as RE2 does it (`re` folds some characters otherwise), unless folding is ASCII's.
            self.__dict__[key] = _re2().compile("(?i)" + body) if fold and not body.isascii() else _compile(
                "(?i)" + body if fold else body, _could_backtrack(self.pattern, self.separator))
        return self.__dict__[key]


def _simple_match(segments: tuple[str, ...], path: str) -> bool:
    """Whether a simple path glob's segments match `path` as its expression would: a literal segment equals the
    path's, `*` is any one segment (empty too), a last `**` is anything after the '/' before it."""
    if not path.startswith("/"):
        return False
    parts = path[1:].split("/")
    if segments[-1] == "**":
        fixed = len(segments) - 1
        if len(parts) <= fixed or ("\n" in path and "\n" in "/".join(parts[fixed:])):  # '.' stops at a newline
            return False
    elif len(parts) != len(segments):
        return False
    else:
        fixed = len(segments)
    for i in range(fixed):
        if segments[i] != "*" and segments[i] != parts[i]:
            return False
    return True


def _simple(pattern: str) -> tuple[str, ...] | None:
    """A path glob's segments if each is literal or exactly `*`, the last one possibly exactly `**`; else None."""
    if "?" in pattern or "{" in pattern or "}" in pattern:
        return None
    segments = tuple(pattern[1:].split("/"))
    for i, segment in enumerate(segments):
        if "*" in segment and segment != "*" and not (segment == "**" and i == len(segments) - 1):
            return None
    return segments


def _could_backtrack(pattern: str, separator: str) -> bool:
    """Whether `re` could backtrack more than linearly on this glob: two `**`, two wildcards in one segment (their
    matches overlap: `*-*`), or a wildcard inside `{...}`. A `*` stays within its segment, so stars in different
    segments, and one `**` before them, are each tried once per place their literal context matches."""
    if pattern.count("**") > 1 or re.search(r"\{[^}]*\*", pattern):
        return True
    return any(segment.replace("**", "*").count("*") > 1 for segment in pattern.split(separator))


def _compile(body: str, backtracks: bool = True) -> Any:
    """RE2 for an expression `re` could backtrack on, else `re` (ten times faster per call than RE2's binding)."""
    return _re2().compile(body) if backtracks else re.compile(body)


@functools.cache
def _re2() -> Any:
    """The RE2 binding, imported when a glob first needs it (globs compile on first use; `log` loads a config's
    globs and compiles none)."""
    import re2

    return re2


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


def _checked(pattern: str, separator: str) -> None:
    """Raise the problem `_translate` would find in a glob; only braces and brackets can have one."""
    if "{" in pattern or "}" in pattern or "[" in pattern or "]" in pattern:
        _translate(pattern, separator)


def compile_path(pattern: str) -> Glob:
    """Compile a path glob: `*` matches inside one segment, `**` across segments, `{a,b}` alternatives."""
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ValueError(f"must be a path glob starting with '/' (got {pattern!r})")
    return _path_glob(pattern)


@functools.lru_cache(maxsize=4096)
def _path_glob(pattern: str) -> Glob:
    _checked(pattern, "/")
    literal = None if "*" in pattern or "?" in pattern or "{" in pattern or "}" in pattern else pattern
    return Glob(pattern, "/", literal, None if literal is not None else _simple(pattern))


def compile_host(pattern: str) -> Glob:
    """Compile a host glob, case-insensitively: `*` matches one DNS label, `**` any number of labels."""
    if not isinstance(pattern, str) or not pattern or any(c in pattern for c in "/: "):
        raise ValueError(f"must be a host name or host glob like '*.example.com' (got {pattern!r})")
    return _host_glob(host_key(pattern))


@functools.lru_cache(maxsize=4096)
def _host_glob(pattern: str) -> Glob:
    """One glob object per pattern: a policy names one host in many rules."""
    _checked(pattern, ".")
    literal = None if "*" in pattern or "?" in pattern or "{" in pattern or "}" in pattern else pattern
    return Glob(pattern, ".", literal)


class HostIndex:
    """Positions of items (rules, credentials) by the literal host names they are bound to; an item with a host glob,
    or with no hosts, may match any host. `positions(host)`: those that may match it, in the items' order (each still
    to be asked whether it does)."""

    def __init__(self, hosts_of_items: Iterable[tuple[Glob, ...]]) -> None:
        literal: dict[str, list[int]] = {}
        wild: list[int] = []
        for i, hosts in enumerate(hosts_of_items):
            literals = {h.literal for h in hosts}
            if hosts and None not in literals:
                for name in literals:
                    literal.setdefault(str(name), []).append(i)
            else:
                wild.append(i)
        self._literal = {name: tuple(places) for name, places in literal.items()}
        self._wild = tuple(wild)

    def positions(self, host: str) -> Iterable[int]:
        named = self._literal.get(host, ())
        return heapq.merge(named, self._wild) if named and self._wild else named or self._wild
