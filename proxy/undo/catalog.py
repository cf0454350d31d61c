"""The reversibility census: every documented mutating operation of a vendor, classified by its shipped undo pack."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .. import yamlsrc
from ..errors import ConfigError, Problem
from ..presets import undo_dir
from ..yamlsrc import YMap
from .plan import UNGUARDED, Exchange, UndoRule, classify, find_rule, plan
from .rules import load_packs

#: The classes that count as covered: a rule of the vendor's own pack says what undo does (or why it cannot).
COVERED = ("exact", "needs-preimage", "lossy", "irreversible")
NOT_COVERED = "not covered"
_FILE_KEYS = {"version", "pack", "vendor", "scope", "operations"}
_OPERATION_KEYS = {"name", "case", "doc", "request", "response", "pre"}
_MESSAGE_KEYS = {"method", "url", "status", "headers", "json", "form", "body"}


@dataclass(frozen=True)
class Operation:
    """One documented operation, or one case of it where the pack tells cases apart, and a typical exchange of it."""

    pack: str
    name: str              # as the vendor documents it
    case: str              # "" for the operation as a whole
    doc: str
    exchange: Exchange


@dataclass(frozen=True)
class Row:
    """How a pack takes one operation back: its class, the rule that gives it, and why where that says more."""

    pack: str
    operation: str
    case: str
    doc: str
    method: str
    url: str
    fidelity: str          # exact, needs-preimage, lossy, irreversible, unguarded, not covered, ...
    rule: str | None
    reason: str

    @property
    def covered(self) -> bool:
        return self.fidelity in COVERED and self.rule is not None and self.rule.startswith(self.pack + "/")

    @property
    def label(self) -> str:
        """The operation's name, and its case if it has one: `PutObject (versioned bucket)`."""
        return f"{self.operation} ({self.case})" if self.case else self.operation


@dataclass(frozen=True)
class Share:
    """A pack's coverage: of the documented operations, how many it covers in every case, and the rest (with the case
    not covered, where others are)."""

    pack: str
    documented: int
    covered: int
    not_covered: tuple[str, ...]
    irreversible: int = 0      # of those covered, how many undo cannot take back in some case (and says why)

    @property
    def share(self) -> float:
        return self.covered / self.documented if self.documented else 0.0

    @property
    def percent(self) -> str:
        return f"{int(100 * self.share)}%"


def catalog_dir() -> Path:
    """Where the shipped catalogs live, one file per vendor (package data `goex_proxy.policies/undo/catalog`)."""
    return undo_dir() / "catalog"


def catalog_files() -> list[Path]:
    return sorted(catalog_dir().glob("*.yaml"))


def pack_path(name: str) -> Path:
    return undo_dir() / f"{name}.yaml"


def _message(checker: yamlsrc.Checker, raw: Any, where: str, pos: tuple[int, int], required: set[str]
             ) -> YMap | None:
    m = checker.mapping(raw, where, pos, _MESSAGE_KEYS, required)
    if m is not None and sum(k in m for k in ("json", "form", "body")) > 1:
        checker.error(m.pos, f"'{where}' may have one of 'json', 'form' or 'body', not several")
    return m


def _body(m: YMap) -> bytes | None:
    if "json" in m:
        return json.dumps(m["json"]).encode()
    if "form" in m:
        return urlencode({k: v if isinstance(v, str) else json.dumps(v) for k, v in m["form"].items()}).encode()
    if "body" in m:
        return str(m["body"]).encode()
    return None


def _headers(m: YMap) -> tuple[tuple[str, str], ...]:
    headers = [(str(k), str(v)) for k, v in (m.get("headers") or {}).items()]
    names = {k.lower() for k, _ in headers}
    if "content-type" not in names and ("json" in m or "form" in m):
        headers.append(("Content-Type", "application/json" if "json" in m else "application/x-www-form-urlencoded"))
    return tuple(headers)


def read_catalog(text: str, file: str) -> tuple[str, list[Operation], list[Problem]]:
    """One vendor's catalog: the pack it measures, its operations with their sample exchanges, and every problem."""
    doc, problems = yamlsrc.load(text, file)
    if problems:
        return "", [], problems
    checker = yamlsrc.Checker(file)
    top = checker.mapping(doc, "catalog", (1, 1), _FILE_KEYS, {"version", "pack", "operations"})
    if top is None:
        return "", [], checker.problems
    checker.version_one(top)  # true too was taken for 1
    pack = checker.string(top, "pack", "pack") or ""
    operations: list[Operation] = []
    seen: set[tuple[str, str]] = set()
    for i, raw, pos in checker.items(top.get("operations"), "operations", checker.at(top, "operations")):
        where = f"operations[{i}]"
        op = checker.mapping(raw, where, pos, _OPERATION_KEYS, {"name", "doc", "request", "response"})
        if op is None:
            continue
        name, doc_url = checker.string(op, "name", f"{where}.name") or "", checker.string(op, "doc", f"{where}.doc") or ""
        case = checker.string(op, "case", f"{where}.case") or ""
        if (name, case) in seen:
            checker.error(checker.at(op, "name"), f"'{where}' {name!r} {case!r} is listed twice")
        seen.add((name, case))
        if not doc_url.startswith("https://"):
            checker.error(checker.at(op, "doc"), f"'{where}.doc' must be the https:// address of the vendor's page")
        request = _message(checker, op.get("request"), f"{where}.request", checker.at(op, "request"), {"method", "url"})
        response = _message(checker, op.get("response"), f"{where}.response", checker.at(op, "response"), {"status"})
        pre = _message(checker, op["pre"], f"{where}.pre", checker.at(op, "pre"), {"status"}) if "pre" in op else None
        if request is None or response is None or "pre" in op and pre is None:
            continue
        exchange = Exchange(str(request["method"]).upper(), str(request["url"]), _headers(request), _body(request),
                            int(response["status"]), _headers(response), _body(response) or b"",
                            int(pre["status"]) if pre is not None else None,
                            _headers(pre) if pre is not None else (), _body(pre) if pre is not None else None)
        operations.append(Operation(pack, name, case, doc_url, exchange))
    return pack, operations, checker.problems


def load_catalogs(paths: Iterable[Path]) -> list[Operation]:
    """Every operation of every catalog, in order; ConfigError with the problems of all files if any is invalid."""
    problems: list[Problem] = []
    operations: list[Operation] = []
    for path in paths:
        _, found, issues = read_catalog(path.read_text(encoding="utf-8"), str(path))
        problems += [p for p in issues if p.severity == "error"]
        operations += found
    if problems:
        raise ConfigError(problems)
    return operations


def row(operation: Operation, rules: Sequence[UndoRule]) -> Row:
    """What the pack's rules make of one operation: the class `classify` gives its row, checked by planning it (a
    rule that classifies but cannot plan its own sample covers nothing)."""
    exchange = operation.exchange
    label = classify(rules, exchange)
    found = find_rule(rules, exchange)
    rule = f"{found[0].pack}/{found[0].name}" if found else None
    fidelity, reason = label, ""
    if label == "no rule":
        fidelity = NOT_COVERED
    elif label.startswith("irreversible: "):
        fidelity, reason = "irreversible", label.removeprefix("irreversible: ")
    elif label in ("exact", "needs-preimage", "lossy", UNGUARDED):
        planned = plan("", exchange, rules)
        if planned.verdict != "plan":
            fidelity, reason = f"{planned.verdict}", planned.reason
        elif planned.unguarded:
            fidelity, reason = UNGUARDED, planned.unguarded
    return Row(operation.pack, operation.name, operation.case, operation.doc, exchange.method, exchange.url, fidelity,
               rule, reason)


def census(operations: Iterable[Operation], packs: dict[str, Sequence[UndoRule]] | None = None) -> list[Row]:
    """Each operation classified by its own vendor's pack alone (default: the shipped pack of that name)."""
    loaded: dict[str, Sequence[UndoRule]] = dict(packs or {})
    rows = []
    for operation in operations:
        if operation.pack not in loaded:
            loaded[operation.pack] = load_packs([pack_path(operation.pack)])
        rows.append(row(operation, loaded[operation.pack]))
    return rows


def shares(rows: Iterable[Row]) -> list[Share]:
    """Per pack, in the order the rows name them: its documented operations, those covered in every case, and the
    rest (an operation covered in some cases only is named with the cases that are not)."""
    by_pack: dict[str, dict[str, list[Row]]] = {}
    for r in rows:
        by_pack.setdefault(r.pack, {}).setdefault(r.operation, []).append(r)
    out = []
    for pack, operations in by_pack.items():
        missing = []
        for name, cases in operations.items():
            uncovered = [r for r in cases if not r.covered]
            if uncovered:
                whole = len(uncovered) == len(cases)
                missing.append(name if whole else f"{name} ({', '.join(r.case for r in uncovered)})")
        irreversible = sum(any(r.covered and r.fidelity == "irreversible" for r in cases) for cases in operations.values())
        out.append(Share(pack, len(operations), len(operations) - len(missing), tuple(missing), irreversible))
    return out


def markdown(found: Iterable[Share]) -> str:
    """The README's table of the census (`goex-proxy undo catalog` prints the same numbers)."""
    lines = ["| pack | documented mutating operations | covered | share | of those, irreversible (in some case) "
             "| not covered |", "| --- | --- | --- | --- | --- | --- |"]
    for s in found:
        missing = ", ".join(s.not_covered) if s.not_covered else "—"
        lines.append(f"| `{s.pack}` | {s.documented} | {s.covered} | {s.percent} | {s.irreversible} | {missing} |")
    return "\n".join(lines) + "\n"
