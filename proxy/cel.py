"""The one door to the CEL engine: compile a condition once, evaluate it to a strict boolean."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: Names a condition may read: the request, the agent's name, and the time in seconds since the epoch.
VARIABLES = frozenset({"request", "agent", "now"})
#: A path into the variables, e.g. ("request", "json", "channel"): the condition reads at most that subtree.
Path = tuple[str, ...]

_LOCATION = re.compile(r"<input>:(\d+):(\d+): (.*)")
_MACRO_VARIABLE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
_REFERENCE = re.compile(r"\b(request|agent|now)((?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*)(\s*\()?")


class CelSyntaxError(ValueError):
    """A condition does not compile; `line` and `col` are 1-based within the expression."""

    def __init__(self, message: str, line: int = 1, col: int = 1) -> None:
        super().__init__(message)
        self.line, self.col = line, col


class CelEvalError(Exception):
    """A condition failed at run time or did not give a boolean; policies treat this as deny."""


@dataclass(frozen=True)
class Condition:
    """A compiled CEL condition, its source text, and the paths it reads (the context is pruned to those)."""

    source: str
    program: Any
    paths: tuple[Path, ...] = ()

    def evaluate(self, context: dict[str, Any]) -> bool:
        try:
            result = self.program.execute(context)
        except Exception as exc:  # the engine raises KeyError, TypeError, RuntimeError, ValueError…
            raise CelEvalError(f"condition `{self.source}` failed: {_describe(exc)}") from None
        if not isinstance(result, bool):
            raise CelEvalError(f"condition `{self.source}` gave {type(result).__name__} {result!r}, not a boolean")
        return result


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no such key {exc.args[0]!r}"
    return str(exc).split(". ")[0]


def read_paths(source: str) -> tuple[Path, ...]:
    """The variable paths an expression can read: each `request.a.b` selector chain, up to a call or an index.

    Handing the engine only these subtrees, not the whole request, is what keeps a decision fast (the engine converts
    every value it is given). Over-reading is harmless; a chain stops before anything that is not a plain selector,
    so `request.json.items.exists(...)` reads all of `request.json.items` and `request["json"]` all of `request`.
    """
    paths: list[Path] = []
    for m in _REFERENCE.finditer(source):
        chain = [part.strip() for part in m.group(2).split(".")[1:]]
        if m.group(3) and chain:  # `request.x.startsWith(...)`: the last name is a method, not a field
            chain.pop()
        paths.append((m.group(1), *chain))
    return tuple(dict.fromkeys(paths))


def compile_condition(source: str) -> Condition:
    """Compile `source`, checking syntax and that it reads only the known variables."""
    if not isinstance(source, str) or not source.strip():
        raise CelSyntaxError("must be a non-empty CEL expression")
    import cel as _engine  # imported on first use: it is slow to import, and the log commands never need it

    try:
        program = _engine.compile(source)
    except ValueError as exc:
        text = str(exc)
        m = _LOCATION.search(text)
        if m:
            raise CelSyntaxError(f"CEL {m.group(3).strip()}", int(m.group(1)), int(m.group(2))) from None
        raise CelSyntaxError(f"CEL: {text}") from None
    bound = set(_MACRO_VARIABLE.findall(source))  # `list.exists(x, ...)` binds x: not a free variable
    unknown = sorted(set(program.variables()) - VARIABLES - bound)
    if unknown:
        known = ", ".join(sorted(VARIABLES))
        raise CelSyntaxError(f"CEL condition reads unknown variable '{unknown[0]}' (known: {known})")
    return Condition(source, program, read_paths(source))
