"""The one door to the CEL engine: compile a condition once, evaluate it to a strict boolean."""

from __future__ import annotations

import functools
import re
import sys
import types
from dataclasses import dataclass
from typing import Any

#: Names a condition may read: the request, the agent's name, and the time in seconds since the epoch.
VARIABLES = frozenset({"request", "agent", "now"})
#: A path into the variables, e.g. ("request", "json", "channel"): the condition reads at most that subtree.
Path = tuple[str, ...]

_LOCATION = re.compile(r"<input>:(\d+):(\d+): (.*)")
_MACRO_VARIABLE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
_CHAIN = r"\b(request|agent|now)((?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*)"
_REFERENCE = re.compile(_CHAIN + r"(\s*\()?")
_LITERAL = r"""(?:"([^"\\]*)"|'([^'\\]*)')"""
#: `request.headers["x"]`: only key x of the map is read.
_INDEXED = re.compile(_CHAIN + r"\s*\[\s*" + _LITERAL + r"\s*\]")
#: `"x" in request.headers`: only whether key x is there is asked.
#: The literal must be a whole operand: `"a" + "b" in m` or `"""a""" in m` ask about other keys, so they read all of m.
_MEMBERSHIP = re.compile(r"(^|[(&|!,?:])(\s*)" + _LITERAL + r"\s+in\s+" + _CHAIN + r"(?!\s*[.\[(])")


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

    def evaluate(self, context: Any) -> bool:
        """Evaluate against a dict of variables or a `bind()`-ed context."""
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


@functools.cache
def _engine() -> Any:
    """The CEL engine module, imported on first use: it is slow to import, and the log commands never need it."""
    # The package's __init__ also imports its command line (typer, rich, prompt_toolkit: ~70 ms) for nothing we
    # use; an empty stand-in for that submodule keeps it out. The engine itself is the compiled `cel.cel`.
    sys.modules.setdefault("cel.cli", types.ModuleType("cel.cli"))
    import cel

    return cel


def bind(variables: dict[str, Any]) -> Any:
    """Hand the variables to the engine once, for several conditions to evaluate against (the costly step)."""
    context = _engine().Context()
    context.update(variables)
    return context


def read_paths(source: str) -> tuple[Path, ...]:
    """The variable paths an expression can read: each `request.a.b` selector chain, up to a call or an index.

    Handing the engine only these subtrees, not the whole request, is what keeps a decision fast (the engine converts
    every value it is given, about 1.3 us per header). Over-reading is harmless; a chain stops before anything that is
    not a plain selector, so `request.json.items.exists(...)` reads all of `request.json.items`. A string-literal
    index or membership test reads one key: `request.headers["x"]` and `"x" in request.headers` read only key x.
    """
    paths: list[Path] = []

    def chain(root: str, selectors: str) -> list[str]:
        return [root, *(part.strip() for part in selectors.split(".")[1:])]

    def consume(m: re.Match[str]) -> str:
        if m.re is _INDEXED:
            paths.append((*chain(m.group(1), m.group(2)), m.group(3) if m.group(3) is not None else m.group(4)))
            return " " * len(m.group(0))
        paths.append((*chain(m.group(5), m.group(6)), m.group(3) if m.group(3) is not None else m.group(4)))
        return m.group(1) + " " * (len(m.group(0)) - len(m.group(1)))

    source = _MEMBERSHIP.sub(consume, _INDEXED.sub(consume, source))
    for m in _REFERENCE.finditer(source):
        path = chain(m.group(1), m.group(2))
        if m.group(3) and len(path) > 1:  # `request.x.startsWith(...)`: the last name is a method, not a field
            path.pop()
        paths.append(tuple(path))
    return tuple(dict.fromkeys(paths))


@dataclass(frozen=True)
class Expression:
    """A compiled CEL expression whose value is used as is (a string, number, list or map), not as a decision."""

    source: str
    program: Any

    def evaluate(self, variables: dict[str, Any]) -> Any:
        try:
            return self.program.execute(variables)
        except Exception as exc:  # the engine raises KeyError, TypeError, RuntimeError, ValueError…
            raise CelEvalError(f"expression `{self.source}` failed: {_describe(exc)}") from None


def compile_expression(source: str, variables: frozenset[str]) -> Expression:
    """Compile an expression over `variables` (checked like a condition's)."""
    return Expression(source, _compile(source, variables))


def compile_condition(source: str, variables: frozenset[str] = VARIABLES) -> Condition:
    """Compile `source`, checking syntax and that it reads only the known variables."""
    return Condition(source, _compile(source, variables), read_paths(source))


def _compile(source: str, variables: frozenset[str]) -> Any:
    if not isinstance(source, str) or not source.strip():
        raise CelSyntaxError("must be a non-empty CEL expression")
    try:
        program = _engine().compile(source)
    except ValueError as exc:
        text = str(exc)
        m = _LOCATION.search(text)
        if m:
            raise CelSyntaxError(f"CEL {m.group(3).strip()}", int(m.group(1)), int(m.group(2))) from None
        raise CelSyntaxError(f"CEL: {text}") from None
    bound = set(_MACRO_VARIABLE.findall(source))  # `list.exists(x, ...)` binds x: not a free variable
    unknown = sorted(set(program.variables()) - variables - bound)
    if unknown:
        known = ", ".join(sorted(variables))
        raise CelSyntaxError(f"CEL expression reads unknown variable '{unknown[0]}' (known: {known})")
    return program
