"""The package map in docs/architecture.md holds: every import goes where its package may import, and no module
imports itself back (through any chain, lazy imports and type-only imports included)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
#: Where each of the package's folders lives (pyproject maps them), so a file's module name can be known.
FOLDERS = {"goex_proxy.addons": ROOT / "addons", "goex_proxy.policies": ROOT / "policies", "goex_proxy": ROOT / "proxy"}


def module_name(path: Path) -> str:
    for package, folder in FOLDERS.items():
        if path.is_relative_to(folder):
            parts = [*package.split("."), *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def sources() -> dict[str, tuple[str, bool]]:
    """Every module of goex-proxy: its source, and whether it is a package's __init__."""
    return {module_name(p): (p.read_text(encoding="utf-8"), p.name == "__init__.py")
            for folder in FOLDERS.values() for p in sorted(folder.rglob("*.py"))}


def imports(module: str, source: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """The modules this source imports (goex_proxy's own, and mitmproxy as one name), with line numbers."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([target] if target else []))
            yield target, node.lineno
            for alias in node.names:  # `from goex_proxy.audit import store` imports a module
                yield f"{target}.{alias.name}", node.lineno


def rules() -> dict[str, set[str]]:
    """The doc's table: package -> the packages (or single modules) it may import."""
    table: dict[str, set[str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and not cells[0].startswith("`package"):
            name = re.findall(r"`([^`]+)`", cells[0])[0]
            table[name] = set(re.findall(r"`([^`]+)`", cells[2]))
    return table


def package_of(module: str, table: dict[str, set[str]]) -> str | None:
    """The table's name for a module: its subpackage (policy, undo, ...), `core`, or None for outside modules."""
    if module == "mitmproxy" or module.startswith("mitmproxy."):
        return "mitmproxy"
    if module != "goex_proxy" and not module.startswith("goex_proxy."):
        return None
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in table:
        return parts[1]
    if len(parts) > 2 and f"{parts[1]}.{parts[2]}" in table:
        return f"{parts[1]}.{parts[2]}"
    return "core" if len(parts) <= 2 else None


def violations(modules: dict[str, tuple[str, bool]], table: dict[str, set[str]]) -> list[str]:
    """Imports the table does not allow, and import cycles between goex-proxy's modules."""
    found: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, (source, is_package) in modules.items():
        own = package_of(module, table)
        assert own is not None, module
        for target, line in imports(module, source, is_package):
            if target in modules and target != module and not module.startswith(target + "."):
                graph[module].add(target)  # (a package's own __init__ is imported before any module of it)
            theirs = package_of(target, table)
            if theirs is None or theirs == own or target not in modules and theirs != "mitmproxy":
                continue
            allowed = table.get(own, set())
            short = target.removeprefix("goex_proxy.")
            if theirs not in allowed and not any(short == a or short.startswith(a + ".") for a in allowed):
                found.append(f"{module}:{line} imports {target}, but `{own}` may import only {sorted(allowed)}")
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_every_import_goes_where_the_package_map_allows_and_none_cycles() -> None:
    problems = violations(sources(), rules())
    assert problems == [], "\n".join(problems)


def test_every_module_has_a_package_in_the_map_and_a_docstring() -> None:
    table = rules()
    for module, (source, _) in sources().items():
        assert package_of(module, table) is not None, f"{module} belongs to no package of docs/architecture.md"
        tree = ast.parse(source)
        assert ast.get_docstring(tree), f"{module} has no module docstring"


@pytest.mark.parametrize(("module", "line", "why"), [
    ("goex_proxy.policy.engine", "from goex_proxy.audit import store",
     ("goex_proxy.policy.engine:", "imports goex_proxy.audit.store, but `policy` may import only ['core']")),
    ("goex_proxy.policy.engine", "import mitmproxy.http", ("imports mitmproxy.http, but `policy` may import only",)),
    ("goex_proxy.errors", "from goex_proxy.config import Config",
     ("import cycle: ", "goex_proxy.config -> ", "goex_proxy.errors -> ")),
])
def test_a_wrong_import_is_caught(module: str, line: str, why: tuple[str, ...]) -> None:
    """The check can fail: the same modules with one import added that the map forbids, or that closes a cycle."""
    modules = sources()
    source, is_package = modules[module]
    modules[module] = (source + f"\n{line}\n", is_package)
    problems = violations(modules, rules())
    assert any(all(w in p for w in why) for p in problems), problems
