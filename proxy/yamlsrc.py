"""Safe YAML loading that remembers where every key and value stood, and a checker that reports `file:line:col`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import yaml

from .errors import ConfigError, Problem

T = TypeVar("T")
Pos = tuple[int, int]


class YMap(dict[str, Any]):
    """A YAML mapping that knows the position of itself, its keys and its values."""

    pos: Pos = (1, 1)
    key_pos: dict[str, Pos]
    value_pos: dict[str, Pos]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_pos, self.value_pos = {}, {}  # an empty stand-in (for a document that is not a mapping) has none


class YList(list[Any]):
    """A YAML sequence that knows the position of itself and of each item."""

    pos: Pos = (1, 1)
    item_pos: list[Pos]


def _mark(node: yaml.Node) -> Pos:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


_STR = "tag:yaml.org,2002:str"
_SCALAR = yaml.ScalarNode


class _Builder:
    def __init__(self, loader: Any, file: str, problems: list[Problem]) -> None:  # a SafeLoader or CSafeLoader
        self.loader = loader
        self.file = file
        self.problems = problems

    def build(self, node: yaml.Node) -> Any:
        # A string is by far the most common node: it is read inline, without a call (10,000 rules hold 100,000).
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)
            out = YMap()
            out.pos = _mark(node)
            key_pos, value_pos = out.key_pos, out.value_pos
            for key_node, value_node in node.value:
                key = key_node.value if key_node.tag == _STR and type(key_node) is _SCALAR else self.build(key_node)
                if not isinstance(key, str):
                    key = str(key)
                if key in out:
                    line, col = _mark(key_node)
                    self.problems.append(Problem(self.file, line, col, f"duplicate key '{key}'"))
                    continue
                out[key] = (value_node.value if value_node.tag == _STR and type(value_node) is _SCALAR
                            else self.build(value_node))
                k, v = key_node.start_mark, value_node.start_mark
                key_pos[key], value_pos[key] = (k.line + 1, k.column + 1), (v.line + 1, v.column + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = YList(n.value if n.tag == _STR and type(n) is _SCALAR else self.build(n) for n in node.value)
            items.pos, items.item_pos = _mark(node), [_mark(n) for n in node.value]
            return items
        if node.tag == _STR and type(node) is _SCALAR:
            return node.value   # what the constructor returns for a string, without its bookkeeping
        try:
            return self.loader.construct_object(node, deep=True)
        except Exception as exc:  # noqa: BLE001 - PyYAML's constructors raise many kinds for a value unlike its tag
            # A tagged scalar that does not read as its tag says (`!!int x`, `!!timestamp 2024-13-45`).
            line, col = _mark(node)
            shown = str(getattr(node, "value", ""))[:60]
            self.problems.append(Problem(self.file, line, col, f"invalid YAML value {shown!r} for {node.tag}: "
                                                               f"{str(exc).splitlines()[0][:100]}"))
            return None


#: libyaml's loader, where PyYAML was built with it: it composes nodes (with their marks) ten times faster than the
#: pure-Python one, which took most of the 10 s a 10,000-rule policy needed to load.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", None)


class _Unusual(Exception):
    """What the event reader leaves to the composer: anchors, aliases, explicit tags, merge keys, values that do not
    read as their tag, duplicate keys, several documents."""


_PLAIN_TAGS = (None, "!")
_MERGE, _VALUE = "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"


def _from_events(loader: Any) -> Any:
    """The document read straight from libyaml's events, as `_Builder` builds it from nodes: the node tree of a
    10,000-rule policy cost half its load. Raises `_Unusual` for anything but plain mappings, lists and scalars."""
    get = loader.get_event
    resolve = loader.resolve
    get()  # the stream's start
    event = get()
    if isinstance(event, yaml.StreamEndEvent):
        return None
    root: list[Any] = []
    # Frames: [container, key of the value awaited (None: a key is awaited), key's position]
    stack: list[list[Any]] = [[root, None, None]]
    while True:
        event = get()
        cls = type(event)
        if cls is yaml.DocumentEndEvent:
            break
        frame = stack[-1]
        container = frame[0]
        if cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
            stack.pop()
            continue
        if event.anchor is not None or cls is yaml.AliasEvent:
            raise _Unusual
        mark = event.start_mark
        pos = (mark.line + 1, mark.column + 1)
        if cls is yaml.ScalarEvent:
            if event.tag not in _PLAIN_TAGS:
                raise _Unusual
            tag = resolve(yaml.ScalarNode, event.value, event.implicit)
            if tag == _STR:
                value: Any = event.value
            elif tag == _MERGE or tag == _VALUE:
                raise _Unusual
            else:
                try:
                    value = loader.construct_object(yaml.ScalarNode(tag, event.value, mark, event.end_mark,
                                                                    event.style), deep=True)
                except Exception:  # noqa: BLE001 - the composer's reading words the problem
                    raise _Unusual from None
            child: Any = None
        elif event.tag not in _PLAIN_TAGS:
            raise _Unusual
        elif cls is yaml.MappingStartEvent:
            value = child = YMap()
            value.pos = pos
        else:
            value = child = YList()
            value.pos, value.item_pos = pos, []
        if type(container) is YList:
            container.append(value)
            container.item_pos.append(pos)
        elif container is root:
            root.append(value)
        elif frame[1] is None:   # a key
            if child is not None:
                raise _Unusual
            key = value if isinstance(value, str) else str(value)
            if key in container:
                raise _Unusual
            frame[1], frame[2] = key, pos
            continue
        else:
            key = frame[1]
            container[key] = value
            container.key_pos[key], container.value_pos[key] = frame[2], pos
            frame[1] = None
        if child is not None:
            stack.append([child, None, None])
    if not isinstance(get(), yaml.StreamEndEvent):
        raise _Unusual
    return root[0]


def _fast(text: str, file: str) -> tuple[Any, list[Problem]] | None:
    """The document read by libyaml and built as `load` builds it (from its events, or from its nodes when it has
    anything unusual); None when libyaml is missing, the text holds a character YAML forbids, or libyaml finds any
    problem: then the pure-Python loader reads it again, so that a document's problems are worded (and located) the
    same way whichever loader is installed."""
    if _FAST_LOADER is None or yaml.reader.Reader.NON_PRINTABLE.search(text):
        return None
    loader = _FAST_LOADER(text)
    try:
        return _from_events(loader), []
    except _Unusual:
        pass
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    finally:
        loader.dispose()
    problems: list[Problem] = []
    loader = _FAST_LOADER(text)
    try:
        node = loader.get_single_node()
        out = None if node is None else _Builder(loader, file, problems).build(node)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    finally:
        loader.dispose()
    return None if problems else (out, problems)


def load(text: str, file: str) -> tuple[Any, list[Problem]]:
    """Parse one YAML document safely; syntax errors come back as problems, never as exceptions."""
    fast = _fast(text, file)
    if fast is not None:
        return fast
    problems: list[Problem] = []
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # its reader already refuses characters YAML forbids (NUL, ESC)
        node = loader.get_single_node()
        if node is None:
            return None, problems
        return _Builder(loader, file, problems).build(node), problems
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        problems.append(Problem(file, line, col, f"invalid YAML: the character #x{exc.character:04x} is not allowed"))
        return None, problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        problems.append(Problem(file, line, col, f"invalid YAML: {what}"))
        return None, problems
    except yaml.YAMLError as exc:
        problems.append(Problem(file, 1, 1, f"invalid YAML: {exc}"))
        return None, problems
    except RecursionError:
        problems.append(Problem(file, 1, 1, "invalid YAML: an alias refers to itself or nests too deeply"))
        return None, problems
    finally:
        if loader is not None:
            loader.dispose()


def type_name(value: Any) -> str:
    """The YAML name of a Python value's type, for messages."""
    return {
        dict: "a mapping", YMap: "a mapping", list: "a list", YList: "a list", str: "a string",
        bool: "a boolean", int: "a number", float: "a number", type(None): "nothing",
    }.get(type(value), type(value).__name__)


#: The longest message a problem keeps whole; most quote the value they are about, which may be any length.
MESSAGE_MAX = 400


def _bounded(message: str) -> str:
    """`message`, its middle left out past MESSAGE_MAX characters: a value of 100,000 characters quoted whole made a
    line no one reads (the start says what is wrong, the end what was expected or got)."""
    if len(message) <= MESSAGE_MAX:
        return message
    keep = (MESSAGE_MAX - 40) // 2
    return f"{message[:keep]} … ({len(message) - 2 * keep} characters left out) … {message[-keep:]}"


class Checker:
    """Collects problems while reading a YAML document against a schema; never stops at the first."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def error(self, pos: Pos, message: str) -> None:
        self.problems.append(Problem(self.file, pos[0], pos[1], _bounded(message)))

    def warn(self, pos: Pos, message: str) -> None:
        self.problems.append(Problem(self.file, pos[0], pos[1], _bounded(message), "warning"))

    def raise_if_errors(self) -> None:
        if any(p.severity == "error" for p in self.problems):
            raise ConfigError(self.problems)

    def mapping(self, value: Any, where: str, pos: Pos, allowed: set[str], required: set[str] = frozenset()) -> YMap | None:  # type: ignore[assignment]
        """Check that `value` is a mapping with only `allowed` keys and all `required` ones."""
        if not isinstance(value, YMap):
            self.error(pos, f"'{where}' must be a mapping (got {type_name(value)})")
            return None
        for key in value:
            if key not in allowed:
                choices = ", ".join(sorted(allowed))
                self.error(value.key_pos[key], f"unknown key '{key}' in '{where}' (expected one of: {choices})")
        if any(key not in value for key in required):
            for key in sorted(required - set(value)):
                self.error(value.pos, f"'{where}' is missing the required key '{key}'")
        return value

    def at(self, parent: YMap, key: str) -> Pos:
        return parent.value_pos.get(key, parent.pos)

    def string(self, parent: YMap, key: str, where: str, default: str | None = None) -> str | None:
        value = parent.get(key, default)
        if value is None or isinstance(value, str):
            return value
        self.error(self.at(parent, key), f"'{where}' must be a string (got {type_name(value)})")
        return default

    def strings(self, parent: YMap, key: str, where: str) -> list[str] | None:
        """A list of strings; a lone string counts as a list of one."""
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        self.error(self.at(parent, key), f"'{where}' must be a string or a list of strings (got {type_name(value)})")
        return None

    def version_one(self, parent: YMap) -> None:
        """A document's `version`, when given, must be 1 (the key's presence is the document's mapping's to require):
        not null, and not `true`, which Python takes for 1."""
        if "version" in parent and (parent["version"] != 1 or isinstance(parent["version"], bool)):
            self.error(self.at(parent, "version"), f"'version' must be 1 (got {parent['version']!r})")

    def narrowing(self, parent: YMap, key: str, where: str) -> frozenset[str] | None:
        """Names a rule or policy is narrowed to (`agents:`): None for every one (the key left out, or '*'). Present
        but null or empty is an error: `agents:` with its value forgotten had silently meant every agent, `[]` none."""
        if key not in parent:
            return None
        names = self.strings(parent, key, where)
        if not names:
            if names is not None or parent.get(key) is None:
                self.error(self.at(parent, key), f"'{where}' must name at least one ('*' for all), or be left out")
            return frozenset()
        return None if "*" in names else frozenset(names)

    def parsed(self, parent: YMap, key: str, where: str, parse: Callable[[Any], T]) -> T | None:
        """Run `parse` on a value, turning its ValueError into a located problem."""
        if key not in parent:
            return None
        try:
            return parse(parent[key])
        except ValueError as exc:
            self.error(self.at(parent, key), f"'{where}' {exc}")
            return None

    def items(self, value: Any, where: str, pos: Pos) -> Iterator[tuple[int, Any, Pos]]:
        if not isinstance(value, YList):
            self.error(pos, f"'{where}' must be a list (got {type_name(value)})")
            return
        yield from ((i, item, value.item_pos[i]) for i, item in enumerate(value))
