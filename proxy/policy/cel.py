"""The one door to the CEL engine: compile a condition once, evaluate it to a strict boolean."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import math
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

#: Names a condition may read: the request, the agent's name, and the time in seconds since the epoch.
VARIABLES = frozenset({"request", "agent", "now"})
#: A path into the variables, e.g. ("request", "json", "channel"): the condition reads at most that subtree.
Path = tuple[str, ...]

_LOCATION = re.compile(r"<input>:(\d+):(\d+): (.*)")
_MACRO_VARIABLE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
#: The roots a path starts at: a policy condition's variables, and those undo expressions read besides.
_CHAIN = r"\b(request|agent|now|response|pre|read)((?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*)"
_REFERENCE = re.compile(_CHAIN + r"(\s*\()?")
_LITERAL = r"""(?:"([^"\\]*)"|'([^'\\]*)')"""
#: `request.headers["x"]`: only key x of the map is read.
_INDEXED = re.compile(_CHAIN + r"\s*\[\s*" + _LITERAL + r"\s*\]")
#: `"x" in request.headers`: only whether key x is there is asked.
#: The literal must be a whole operand: `"a" + "b" in m` or `"""a""" in m` ask about other keys, so they read all of m.
_MEMBERSHIP = re.compile(r"(^|[(&|!,?:])(\s*)" + _LITERAL + r"\s+in\s+" + _CHAIN + r"(?!\s*[.\[(])")
#: A string literal, to blank out before looking for calls in the source (escapes included; raw and triple-quoted
#: strings are read as runs of plain ones, which is close enough for that).
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')
#: `ns.name(`: a call of a namespaced function such as `base64.encode(`, the namespace not itself a selector.
_NAMESPACED_CALL = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*\.\s*([A-Za-z_]\w*)\s*\(")
#: A named function in `program.functions()`, not an operator (`_+_`, `@in`, `!_`).
_NAMED = re.compile(r"[A-Za-z]\w*")
#: CEL's own functions (the engine's standard library, macros included): always there, never reported as unknown.
BUILTIN_FUNCTIONS = frozenset({
    "size", "contains", "startsWith", "endsWith", "matches", "string", "bytes", "int", "uint", "double", "timestamp",
    "duration", "dyn", "type", "has", "all", "exists", "exists_one", "map", "filter", "getFullYear", "getMonth",
    "getDayOfYear", "getDayOfMonth", "getDate", "getDayOfWeek", "getHours", "getMinutes", "getSeconds",
    "getMilliseconds", "of", "none", "ofNonZeroValue", "hasValue", "value", "orValue", "or"})


class CelSyntaxError(ValueError):
    """A condition does not compile; `line` and `col` are 1-based within the expression."""

    def __init__(self, message: str, line: int = 1, col: int = 1) -> None:
        super().__init__(message)
        self.line, self.col = line, col


class CelEvalError(Exception):
    """A condition failed at run time or did not give a boolean; policies treat this as deny."""


#: Functions a compiled expression calls beyond CEL's own, by the names the engine is given them under.
Functions = dict[str, Callable[..., Any]]


@dataclass(frozen=True)
class Condition:
    """A compiled CEL condition, its source text, and the paths it reads (the context is pruned to those)."""

    source: str
    program: Any
    paths: tuple[Path, ...] = ()
    #: The template functions it calls (undo expressions only), handed to the engine with the variables; None for
    #: the many that call none, which are evaluated exactly as before (a policy decision's fast path).
    functions: Functions | None = field(default=None, compare=False, repr=False)

    def evaluate(self, context: Any) -> bool:
        """Evaluate against a dict of variables or a `bind()`-ed context."""
        try:
            result = self.program.execute(context if self.functions is None else _with(context, self.functions))
        except Exception as exc:  # the engine raises KeyError, TypeError, RuntimeError, ValueError…
            raise CelEvalError(f"condition `{self.source}` failed: {_describe(exc)}") from None
        if not isinstance(result, bool):
            raise CelEvalError(f"condition `{self.source}` gave {type(result).__name__} {result!r}, not a boolean")
        return result


def _with(context: Any, functions: Functions) -> Any:
    """The variables and the functions an expression calls, together as the engine takes them."""
    if isinstance(context, dict):
        return {**context, **functions}  # the engine takes a callable in the dict as a function
    for name, function in functions.items():
        context.add_function(name, function)
    return context


#: How the engine reports an exception raised in one of our functions.
_CALLBACK_ERROR = re.compile(r"Function '([^']+)' error: Python function call failed: (?:[A-Za-z_]\w*: )?(.*?)"
                             r"(?:\. Check function arguments.*)?$", re.S)


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no such key {exc.args[0]!r}"
    m = _CALLBACK_ERROR.match(str(exc))
    if m:
        name, message = m.group(1), m.group(2).strip()
        name = "matches" if name == MATCHES else name
        return message if message.startswith(name) else f"{name}: {message}"
    return str(exc).split(". ")[0]


@functools.cache
def _engine() -> Any:
    """The CEL engine module, imported on first use: it is slow to import, and the log commands never need it."""
    # The package's __init__ also imports its command line (typer, rich, prompt_toolkit: ~70 ms) for nothing we
    # use; an empty stand-in for that submodule keeps it out. The engine itself is the compiled `cel.cel`.
    sys.modules.setdefault("cel.cli", types.ModuleType("cel.cli"))
    import cel

    # The engine also logs each exception one of our functions raises (logger "cel", to stderr when nothing is
    # configured); it reaches us as the evaluation's error anyway, which says it better and where.
    logging.getLogger("cel").addHandler(logging.NullHandler())
    logging.getLogger("cel").propagate = False
    return cel


#: The most objects and arrays, and values in all, a policy decision hands the engine (`bind(..., bounded=True)`): it
#: converts each object or array in 1-2 µs, holding the event loop, and a 12 MiB body's array of 4 million read by a
#: condition (`size(request.json.items) <= 10`) held every agent's requests 7 s. Past them the condition fails, and
#: a request it would allow is denied with why; a value of JSON past them is read by no condition.
MOST_CONTAINERS = 10_000
MOST_VALUES = 100_000


def bind(variables: dict[str, Any], *, bounded: bool = False) -> Any:
    """Hand the variables to the engine once, for several conditions to evaluate against (the costly step).
    `bounded`: a CelEvalError rather than more than MOST_CONTAINERS objects and arrays or MOST_VALUES values."""
    if bounded:
        _check_size(variables)
    context = _engine().Context()
    try:
        context.update(variables)
    except ValueError:  # a text the engine cannot take: again, with each lone surrogate in it replaced
        context = _engine().Context()
        context.update(convertible(variables))
    return context


def _check_size(variables: dict[str, Any]) -> None:
    """Raise CelEvalError if `variables` hold more objects and arrays, or values, than `bind` may hand the engine
    (counted until one count is past its bound: the walk itself stays within them)."""
    containers, values = 0, 0
    work: list[Any] = [variables]
    while work:
        found = work.pop()
        containers += 1
        values += len(found)
        if containers > MOST_CONTAINERS or values > MOST_VALUES:
            raise CelEvalError(f"the request holds more than {MOST_CONTAINERS:,} objects and arrays or "
                               f"{MOST_VALUES:,} values where its conditions read, more than a condition is given")
        work += [item for item in (found.values() if isinstance(found, dict) else found)
                 if isinstance(item, (dict, list, tuple))]


#: A lone surrogate: a byte that was not UTF-8 in a header (read with surrogateescape), or JSON's `"\udc80"`, which
#: Python's parser reads as one. The engine takes only Unicode text, and raised on either (ValueError), which
#: ended the undo class of a request an upstream answered with one, and so the outcome of its audit row.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def convertible(value: Any) -> Any:
    """`value` with each lone surrogate in its texts (keys too) as U+FFFD, the character that stands for what cannot
    be read, as a body's text view has it; the rest as it is. A loop, not a recursion: JSON nests as deep as
    Python's parser goes."""
    def text(found: str) -> str:
        return _LONE_SURROGATE.sub("\ufffd", found) if not found.isascii() else found

    def fresh(found: Any) -> Any:
        if isinstance(found, str):
            return text(found)
        if isinstance(found, dict):
            return {}
        if isinstance(found, (list, tuple)):
            return []
        return found

    out = fresh(value)
    work = [(value, out)] if isinstance(value, (dict, list, tuple)) else []
    while work:
        source, target = work.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in items:
            made = fresh(item)
            if isinstance(target, dict):
                target[text(key) if isinstance(key, str) else key] = made
            else:
                target.append(made)
            if isinstance(item, (dict, list, tuple)):
                work.append((item, made))
    return out


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
    functions: Functions | None = field(default=None, compare=False, repr=False)  # as Condition's
    #: The paths it reads (as Condition's); None: not known, it is handed every variable.
    paths: tuple[Path, ...] | None = field(default=None, compare=False, repr=False)

    def evaluate(self, variables: dict[str, Any]) -> Any:
        try:
            return self.program.execute(variables if self.functions is None else _with(variables, self.functions))
        except Exception as exc:  # the engine raises KeyError, TypeError, RuntimeError, ValueError…
            raise CelEvalError(f"expression `{self.source}` failed: {_describe(exc)}") from None


def compile_expression(source: str, variables: frozenset[str], library: bool | None = None) -> Expression:
    """Compile an expression over `variables` (checked like a condition's)."""
    return Expression(source, *_compile(source, variables, library), paths=read_paths(source))


def compile_condition(source: str, variables: frozenset[str] = VARIABLES, library: bool | None = None) -> Condition:
    """Compile `source`, checking syntax and that it reads only the known variables.

    `library`: whether it may call the template functions (`template_functions()`); by default every expression may
    but a policy condition (over `VARIABLES`), which keeps to CEL's own functions."""
    program, functions = _compile(source, variables, library)
    return Condition(source, program, read_paths(source), functions)


#: A comprehension macro's name and its opening parenthesis: `.all(`, `.exists(`, `.exists_one(`, `.map(`, `.filter(`.
_COMPREHENSION = re.compile(r"\.\s*(all|exists_one|exists|map|filter)\s*\(")


@dataclass(frozen=True)
class Nesting:
    """A comprehension inside another's body: their names, and where the inner one is (1-based, in the source)."""

    outer: str
    inner: str
    line: int
    col: int


def nested_comprehension(source: str) -> Nesting | None:
    """The first comprehension macro written inside another's parentheses, if any: each one runs its body once per
    element, so nested ones multiply their lists' lengths (three lists of 300 make 27 million evaluations, seconds of
    CPU). Read from the source, string literals blanked; a macro chained after another (`l.map(..).all(..)`) is not
    nested."""
    text = _STRING.sub(lambda m: " " * len(m.group(0)), source)
    macros = {m.end() - 1: m.group(1) for m in _COMPREHENSION.finditer(text)}
    open_parens: list[str | None] = []  # for each open parenthesis, the macro it belongs to (None: any other)
    for i, char in enumerate(text):
        if char == "(":
            name = macros.get(i)
            outer = next((o for o in reversed(open_parens) if o is not None), None)
            if name is not None and outer is not None:
                line = source.count("\n", 0, i) + 1
                start = text.rfind(".", 0, i)
                return Nesting(outer, name, line, start - (source.rfind("\n", 0, start) + 1) + 1)
            open_parens.append(name)
        elif char == ")" and open_parens:
            open_parens.pop()
    return None


#: A call of CEL's `matches` (`s.matches(re)` or `matches(s, re)`), found in the source with its strings blanked.
_MATCHES_CALL = re.compile(r"(?<![\w])matches(\s*\()")
#: What `matches` calls are compiled to: the engine compiles a call's regex anew at every evaluation (50-70 us each),
#: so they go through `_matches`, which remembers the engine's own answers.
MATCHES = "goex_matches"
#: Strings longer than this are matched without being remembered (the cache must stay small whatever agents send).
_MATCHES_CACHED_CHARS = 1024


@functools.cache
def _matches_program() -> Any:
    return _engine().compile("s.matches(p)")


@functools.lru_cache(maxsize=4096)
def _cached_matches(text: str, pattern: str) -> bool:
    return bool(_matches_program().execute({"s": text, "p": pattern}))


def _matches(text: Any, pattern: Any) -> bool:
    """CEL's `matches`, answered by the engine itself (same regex dialect, same result), each (text, pattern) pair
    compiled and run once: a policy or undo rule tries the same few patterns on the same hosts and paths again and
    again."""
    if not isinstance(text, str) or not isinstance(pattern, str):
        raise TypeError(f"matches takes a string and a regex string, not {_kind(text)} and {_kind(pattern)}")
    try:
        if len(text) > _MATCHES_CACHED_CHARS or len(pattern) > _MATCHES_CACHED_CHARS:
            return bool(_matches_program().execute({"s": text, "p": pattern}))
        return _cached_matches(text, pattern)
    except Exception as exc:  # an invalid regex: the engine's message, on one line
        raise ValueError(" ".join(str(exc).removeprefix("Function 'matches' error: ").split())) from None


def _fast_matches(source: str) -> str | None:
    """`source` with its `matches` calls renamed to `MATCHES`, or None if it makes none."""
    text = _STRING.sub(lambda m: " " * len(m.group(0)), source)
    spans = [m.start() for m in _MATCHES_CALL.finditer(text)]
    if not spans:
        return None
    out, last = [], 0
    for start in spans:
        out += [source[last:start], MATCHES]
        last = start + len("matches")
    return "".join(out) + source[last:]


def _compile(source: str, variables: frozenset[str], library: bool | None) -> tuple[Any, Functions | None]:
    """The program, and the template functions it calls (None if none); unknown variables and, where the template
    functions are offered, unknown functions are refused here rather than failing at every evaluation. A source
    that calls `matches` is checked as written, then compiled with those calls renamed (`_fast_matches`)."""
    program, functions = _checked(source, variables, library)
    renamed = _fast_matches(source)
    if renamed is None:
        return program, functions
    try:
        fast = _engine().compile(renamed)
    except ValueError:  # never expected (only a name changed); the program as written still works
        return program, functions
    return fast, {**(functions or {}), MATCHES: _matches}


def _checked(source: str, variables: frozenset[str], library: bool | None) -> tuple[Any, Functions | None]:
    """The program as written, and the template functions it calls, once the checks `_compile` names pass."""
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
    functions: Functions | None = None
    namespaces: set[str] = set()
    if library if library is not None else variables != VARIABLES:
        functions, namespaces = _functions_called(source, program.functions())
    unknown = sorted(set(program.variables()) - variables - bound - namespaces)
    if unknown:
        known = ", ".join(sorted(variables))
        raise CelSyntaxError(f"CEL expression reads unknown variable '{unknown[0]}' (known: {known})")
    return program, functions


def _functions_called(source: str, names: list[str]) -> tuple[Functions | None, set[str]]:
    """The template functions `source` calls (None if none) and the namespaces it names in calls (`base64` of
    `base64.encode(x)`, which the engine lists as a variable); CelSyntaxError, located, for a function that is
    neither CEL's nor a template function."""
    library = template_functions()
    text = _STRING.sub(lambda m: " " * len(m.group(0)), source)  # a call spelled in a string literal is no call
    qualified = {f"{m.group(1)}.{m.group(2)}" for m in _NAMESPACED_CALL.finditer(text)} & library.keys()
    called = {name: library[name] for name in qualified}
    for name in names:
        if not _NAMED.fullmatch(name) or name in BUILTIN_FUNCTIONS or any(q.endswith("." + name) for q in qualified):
            continue
        if name in library:
            called[name] = library[name]
            continue
        m = re.search(r"(?:(?<![\w.])([A-Za-z_]\w*)\s*\.\s*)?\b" + name + r"\s*\(", text)
        start = m.start() if m else 0
        shown = f"{m.group(1)}.{name}" if m and m.group(1) else name
        line = source.count("\n", 0, start) + 1
        col = start - (source.rfind("\n", 0, start) + 1) + 1
        raise CelSyntaxError(f"CEL expression calls unknown function '{shown}' (not CEL's own, nor a template "
                             "function)", line, col)
    return called or None, {name.split(".")[0] for name in qualified}


# Template functions: what undo rules need beyond CEL's own to build requests (README, "Template functions").
# The engine's optional libraries give most string, base64 and math functions as Python callables; the rest are
# here. Each raises a one-line error naming itself, which evaluation reports as the expression's failure.


#: CEL's names for the Python types the engine hands our functions (bool before int: a bool is an int to Python).
_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "bool"), (int, "int"), (float, "double"), (str, "string"), (bytes, "bytes"), (list, "list"), (dict, "map"),
    (datetime, "timestamp"), (timedelta, "duration"), (type(None), "null"))


def _kind(value: Any) -> str:
    """A value's CEL type name, for messages."""
    return next((name for kind, name in _KINDS if isinstance(value, kind)), type(value).__name__)


def _taking(name: str, function: Callable[..., Any], *kinds: type) -> Callable[..., Any]:
    """`function`, refusing a first argument (the receiver of `x.name()`) of another type with a clear message."""
    wanted = " or ".join(dict(_KINDS)[kind] for kind in kinds)

    def call(first: Any, *rest: Any) -> Any:
        if not isinstance(first, kinds):
            raise TypeError(f"{name} takes a {wanted}, not {_kind(first)}")
        return function(first, *rest)

    return call


def _text(value: Any) -> str:
    """A value as `%s` shows it: strings as they are, lists and maps as JSON, the rest as CEL writes them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("format: %s of bytes that are not UTF-8 text (use base64.encode or %x)") from None
    if isinstance(value, float):
        return _real(value, "%s")
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, list | dict):
        return _json_encode(value)
    return str(value)


def _real(value: float, verb: str, precision: int | None = None) -> str:
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if verb == "%s":
        return repr(value)
    return f"{value:.{6 if precision is None else precision}{verb[-1]}}"


_VERB = re.compile(r"%(?:\.(\d{1,9}))?([A-Za-z%])")
#: The largest precision `format` takes: a string from a request must not make it build gigabytes.
MAX_PRECISION = 100


def _format(template: str, args: Any) -> str:
    """`"%s-%d".format([a, b])`, as cel-go's: %s %d %f %e %x %X %o %b and %%, `%.2f` giving a precision."""
    if not isinstance(args, list):
        raise TypeError(f"format takes a list of arguments, not {_kind(args)}")
    out: list[str] = []
    used, i = 0, 0
    while i < len(template):
        char = template[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        m = _VERB.match(template, i)
        if m is None:
            raise ValueError(f"format: '%' at character {i + 1} starts no verb (write %% for a percent sign)")
        precision = int(m.group(1)) if m.group(1) is not None else None
        if precision is not None and precision > MAX_PRECISION:
            raise ValueError(f"format: precision {precision} is more than {MAX_PRECISION}")
        verb, i = m.group(2), m.end()
        if verb == "%" and precision is None:
            out.append("%")
            continue
        if verb not in "sdfexXob" or precision is not None and verb not in "fe":
            raise ValueError(f"format: unknown verb {m.group(0)!r} (known: %s %d %f %e %x %X %o %b %%, and %.Nf, %.Ne)")
        if used >= len(args):
            raise ValueError(f"format: {m.group(0)} at character {m.start() + 1} has no argument ({len(args)} given)")
        value = args[used]
        used += 1
        out.append(_verb(verb, value, precision))
    if used < len(args):
        raise ValueError(f"format: {len(args)} arguments for {used} verbs")
    return "".join(out)


def _verb(verb: str, value: Any, precision: int | None) -> str:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if verb == "s":
        return _text(value)
    if verb in "fe" and number:
        return _real(float(value), "%" + verb, precision)
    if verb in "xX" and isinstance(value, str | bytes):
        hexed = (value.encode() if isinstance(value, str) else value).hex()
        return hexed.upper() if verb == "X" else hexed
    if verb in "dxXob" and isinstance(value, int) and not isinstance(value, bool):
        return format(value, verb)
    wanted = {"d": "an int", "f": "a number", "e": "a number", "o": "an int", "b": "an int"}.get(verb, "an int, string or bytes")
    raise TypeError(f"format: %{verb} needs {wanted}, not {_kind(value)}")


def _json_encode(value: Any) -> str:
    """JSON text of a value, keys sorted (the engine's maps have no order of their own), no spaces."""
    def refuse(v: Any) -> Any:
        raise TypeError(f"json.encode: a {_kind(v)} value has no JSON form" +
                        (" (base64.encode it, or decode it as text with string())" if isinstance(v, bytes) else ""))

    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=refuse)
    except ValueError as exc:  # NaN or an infinity
        raise ValueError(f"json.encode: {exc}") from None


def _json_decode(text: Any) -> Any:
    if not isinstance(text, str | bytes):
        raise TypeError(f"json.decode takes a string or bytes, not {_kind(text)}")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"json.decode: not JSON ({str(exc).split(':')[0]})") from None


def _base64_decode(text: str) -> bytes:
    """Standard base64, with or without its `=` padding."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise ValueError("base64.decode: not base64 text") from None


def _keys(name: str, keys: Any) -> list[Any]:
    if not isinstance(keys, list):
        raise TypeError(f"{name} takes a list of keys, not {_kind(keys)}")
    return keys


def _omit(mapping: dict[Any, Any], keys: Any) -> dict[Any, Any]:
    drop = _keys("omit", keys)
    return {k: v for k, v in mapping.items() if k not in drop}


def _pick(mapping: dict[Any, Any], keys: Any) -> dict[Any, Any]:
    return {k: mapping[k] for k in _keys("pick", keys) if k in mapping}


def _merge(mapping: dict[Any, Any], other: Any) -> dict[Any, Any]:
    if not isinstance(other, dict):
        raise TypeError(f"merge takes a map to merge in, not {_kind(other)}")
    return {**mapping, **other}


def _to_map(keys: list[Any], value: Any) -> dict[Any, Any]:
    for key in keys:
        if not isinstance(key, str | int):
            raise TypeError(f"toMap: a map key is a string, int or bool, not {_kind(key)}")
    return dict.fromkeys(keys, value)


def _sha256(data: Any) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _md5(data: Any) -> bytes:
    """The raw MD5 digest, for headers such as S3's Content-MD5 (`base64.encode(md5(body))`); not a security hash."""
    return hashlib.md5(data.encode() if isinstance(data, str) else data, usedforsecurity=False).digest()


@functools.cache
def template_functions() -> Functions:
    """Every template function by the name expressions call it by (`trim`, `base64.encode`, `math.abs`, …)."""
    stdlib = _engine().stdlib.EXTENSIONS
    strings = {name: _taking(name, stdlib["strings"][name], str)
               for name in ("charAt", "indexOf", "lastIndexOf", "substring", "replace", "split", "lowerAscii",
                            "upperAscii", "trim")}
    return {
        **strings,
        "format": _taking("format", _format, str),
        "join": _taking("join", stdlib["strings"]["join"], list),
        "base64.encode": _taking("base64.encode", stdlib["encoders"]["base64.encode"], bytes, str),
        "base64.decode": _taking("base64.decode", _base64_decode, str),
        "json.encode": _json_encode,
        "json.decode": _json_decode,
        "omit": _taking("omit", _omit, dict),
        "pick": _taking("pick", _pick, dict),
        "merge": _taking("merge", _merge, dict),
        "toMap": _taking("toMap", _to_map, list),
        "sha256": _taking("sha256", _sha256, bytes, str),
        "md5": _taking("md5", _md5, bytes, str),
        "sort": _taking("sort", stdlib["lists"]["sort"], list),
        **stdlib["math"],
    }
