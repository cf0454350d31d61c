"""The one door to the CEL engine: compile a condition once, evaluate it to a strict boolean."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import cel as _engine

#: Names a condition may read: the request, the agent's name, and the time in seconds since the epoch.
VARIABLES = frozenset({"request", "agent", "now"})

_LOCATION = re.compile(r"<input>:(\d+):(\d+): (.*)")


class CelSyntaxError(ValueError):
    """A condition does not compile; `line` and `col` are 1-based within the expression."""

    def __init__(self, message: str, line: int = 1, col: int = 1) -> None:
        super().__init__(message)
        self.line, self.col = line, col


class CelEvalError(Exception):
    """A condition failed at run time or did not give a boolean; policies treat this as deny."""


@dataclass(frozen=True)
class Condition:
    """A compiled CEL condition and its source text."""

    source: str
    program: Any

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


def compile_condition(source: str) -> Condition:
    """Compile `source`, checking syntax and that it reads only the known variables."""
    if not isinstance(source, str) or not source.strip():
        raise CelSyntaxError("must be a non-empty CEL expression")
    try:
        program = _engine.compile(source)
    except ValueError as exc:
        text = str(exc)
        m = _LOCATION.search(text)
        if m:
            raise CelSyntaxError(f"CEL {m.group(3).strip()}", int(m.group(1)), int(m.group(2))) from None
        raise CelSyntaxError(f"CEL: {text}") from None
    unknown = sorted(set(program.variables()) - VARIABLES)
    if unknown:
        known = ", ".join(sorted(VARIABLES))
        raise CelSyntaxError(f"CEL condition reads unknown variable '{unknown[0]}' (known: {known})")
    return Condition(source, program)
