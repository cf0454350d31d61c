"""Undo rule packs: YAML read onto `UndoRule` values (shipped as `builtin:NAME`), every problem as `file:line:col`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

from .. import yamlsrc
from ..errors import ConfigError, Problem
from ..globs import compile_host, compile_path
from ..policy.cel import CelSyntaxError, compile_condition, compile_expression
from ..policy.load import RuleReader, expression_pos
from ..yamlsrc import YMap
from .plan import (
    FIDELITIES,
    READ_METHODS,
    UNDO_VARIABLES,
    UNGUARDED,
    Fidelity,
    Guard,
    RequestTemplate,
    Template,
    UndoRule,
    expressions,
    is_condition,
)

_PACK_KEYS = {"version", "name", "description", "rules"}
_RULE_KEYS = {"name", "match", "when", "effective", "class", "reason", "undo", "guard", "preimage", "twin",
              "description"}
_REQUEST_KEYS = {"method", "url", "headers", "json", "form", "body", "success", "why", "repeatable", "conflict"}


def _string_end(text: str, start: int) -> int:
    """Where the CEL string literal opened at `start` closes (a backslash escapes the next character)."""
    j = start + 1
    while j < len(text) and text[j] != text[start]:
        j += 2 if text[j] == "\\" else 1
    return min(j, len(text))


def parse_template(text: str) -> Template:
    """Split `a ${expr} b` into literal and expression parts; `$${` is a literal `${`."""
    parts: list[Any] = []
    i, literal = 0, ""
    while i < len(text):
        if text.startswith("$${", i):
            literal, i = literal + "${", i + 3
        elif text.startswith("${", i):
            end, depth, j = -1, 0, i + 2
            while j < len(text):
                if text[j] in "{[(":
                    depth += 1
                elif text[j] in "}])":
                    if depth == 0 and text[j] == "}":
                        end = j
                        break
                    depth -= 1
                elif text[j] in "'\"":
                    j = _string_end(text, j)
                j += 1
            if end == -1:
                raise CelSyntaxError(f"'${{' at character {i + 1} is never closed with '}}'")
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(compile_expression(text[i + 2:end], UNDO_VARIABLES))
            i = end + 1
        else:
            literal, i = literal + text[i], i + 1
    if literal or not parts:
        parts.append(literal)
    return Template(text, tuple(parts))


def reads(part: Any) -> set[str]:
    """The names every expression inside a rule part reads."""
    return set().union(*(e.program.variables() for e in expressions(part)))


class _UndoReader(RuleReader):
    def __init__(self, file: str, text: str) -> None:
        super().__init__(file, text)
        self.preimage_methods: list[frozenset[str] | None] = []  # the methods of each rule read so far with a preimage

    def condition(self, m: YMap, key: str, where: str) -> Any:
        if key not in m:
            return None
        try:
            return compile_condition(m[key], UNDO_VARIABLES)
        except CelSyntaxError as exc:
            self.check.error(expression_pos(self.lines, self.check.at(m, key), exc), f"'{where}.{key}' {exc}")
            return None

    def template(self, m: YMap, key: str, where: str) -> Template | None:
        value = m.get(key)
        if not isinstance(value, str):
            self.check.error(self.check.at(m, key) if key in m else m.pos, f"'{where}.{key}' must be a string")
            return None
        try:
            return parse_template(value)
        except CelSyntaxError as exc:
            self.check.error(self.check.at(m, key), f"'{where}.{key}' {exc}")
            return None

    def tree(self, value: Any, where: str, pos: tuple[int, int]) -> Any:
        if isinstance(value, str):
            try:
                return parse_template(value)
            except CelSyntaxError as exc:
                self.check.error(pos, f"'{where}' {exc}")
                return None
        if isinstance(value, dict):
            return {k: self.tree(v, f"{where}.{k}", value.value_pos.get(k, pos) if isinstance(value, YMap) else pos)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.tree(v, f"{where}[{i}]", pos) for i, v in enumerate(value)]
        return value

    def request(self, raw: Any, where: str, pos: tuple[int, int]) -> RequestTemplate | None:
        r = self.check.mapping(raw, where, pos, _REQUEST_KEYS, {"method", "url"})
        if r is None:
            return None
        method = str(r.get("method", "")).upper()
        if method not in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
            self.check.error(self.check.at(r, "method"), f"'{where}.method' must be an HTTP method (got {method!r})")
        url = self.template(r, "url", where)
        headers: list[tuple[str, Template]] = []
        hm = self.check.mapping(r.get("headers", YMap()), f"{where}.headers", self.check.at(r, "headers"),
                                set(r.get("headers") or {}))
        for name in hm or {}:
            t = self.template(hm, name, f"{where}.headers") if hm is not None else None
            if t is not None:
                headers.append((name, t))
        if sum(k in r for k in ("json", "form", "body")) > 1:
            self.check.error(r.pos, f"'{where}' may have one of 'json', 'form' or 'body', not several")
        repeatable = r.get("repeatable")
        if repeatable is not None and not isinstance(repeatable, bool):
            self.check.error(self.check.at(r, "repeatable"), f"'{where}.repeatable' must be true or false")
            repeatable = None
        form = None
        if "form" in r:
            from .forms import NOT_A_FORM, form_problems

            for at, message in form_problems(r["form"], self.check.at(r, "form")):
                self.check.error(at, f"'{where}.form' {message}")
            form = self.tree(r["form"], f"{where}.form", self.check.at(r, "form"))
            if isinstance(form, Template) and (len(form.parts) != 1 or isinstance(form.parts[0], str)):
                self.check.error(self.check.at(r, "form"), f"'{where}.form' {NOT_A_FORM} (got text)")
        return RequestTemplate(method, url or Template("", ("",)), tuple(headers),
                               self.tree(r["json"], f"{where}.json", self.check.at(r, "json")) if "json" in r else None,
                               form, self.template(r, "body", where) if "body" in r else None,
                               self.condition(r, "success", where), str(r.get("why", "")),
                               self.condition(r, "conflict", where), repeatable)

    def rule(self, pack: str, raw: Any, pos: tuple[int, int], index: int) -> UndoRule | None:  # type: ignore[override]
        where = f"rules[{index}]"
        r = self.check.mapping(raw, where, pos, _RULE_KEYS, {"name", "match", "class"})
        if r is None:
            return None
        name = self.check.string(r, "name", f"{where}.name") or f"#{index + 1}"
        m = self.check.mapping(r.get("match"), f"{where}.match", self.check.at(r, "match"),
                               {"host", "hosts", "method", "methods", "path", "paths"})
        if m is None:
            return None
        hosts = self.globs(m, ("host", "hosts"), f"{where}.match", compile_host)
        if not hosts:
            self.check.error(m.pos, f"'{where}.match' must name a 'host'")
        fidelity = r.get("class")
        if fidelity not in FIDELITIES:
            self.check.error(self.check.at(r, "class"), f"'{where}.class' must be one of {', '.join(FIDELITIES)} "
                                                        f"(got {fidelity!r})")
            fidelity = "irreversible"
        fidelity = cast(Fidelity, fidelity)
        reason = self.check.string(r, "reason", f"{where}.reason") or ""
        steps = [self.request(s, f"{where}.undo[{i}]", p)
                 for i, s, p in self.check.items(r.get("undo", yamlsrc.YList()), f"{where}.undo", self.check.at(r, "undo"))]
        if fidelity == "irreversible" and steps:
            self.check.error(self.check.at(r, "undo"), f"'{where}' is irreversible but has undo steps")
        if fidelity == "irreversible" and not reason:
            self.check.error(r.pos, f"'{where}' is irreversible: say why in 'reason' (it is shown with every row)")
        if fidelity != "irreversible" and not steps:
            self.check.error(r.pos, f"'{where}' needs 'undo' steps (or class: irreversible with a reason)")
        guard, unneeded = None, ""
        if "guard" in r and isinstance(r["guard"], dict) and "unneeded" in r["guard"]:
            g = self.check.mapping(r["guard"], f"{where}.guard", self.check.at(r, "guard"), {"unneeded"})
            unneeded = (self.check.string(g, "unneeded", f"{where}.guard.unneeded") or "") if g is not None else ""
            if g is not None and not unneeded.strip():
                self.check.error(self.check.at(g, "unneeded"), f"'{where}.guard.unneeded' must say why no change "
                                                               "made after the agent's can be lost by this undo")
        elif "guard" in r:
            g = self.check.mapping(r["guard"], f"{where}.guard", self.check.at(r, "guard"),
                                   {"read", "expect", "conflict", "refused", "changes_with"}, {"read", "expect"})
            if g is not None:
                read = self.request(g["read"], f"{where}.guard.read", self.check.at(g, "read")) if "read" in g else None
                if read is not None and read.method not in READ_METHODS:
                    self.check.error(self.check.at(g, "read"), f"'{where}.guard.read' must be a GET or HEAD (it is "
                                                               "sent before undo decides anything, and must change nothing)")
                expect = self.condition(g, "expect", f"{where}.guard")
                refused = self.condition(g, "refused", f"{where}.guard")
                changes_with = self.check.strings(g, "changes_with", f"{where}.guard.changes_with") or []
                if read is not None and expect is not None:
                    guard = Guard(read, expect, str(g.get("conflict") or "the resource changed after the agent's request"),
                                  refused, tuple(changes_with))
        preimage = self.request(r["preimage"], f"{where}.preimage", self.check.at(r, "preimage")) \
            if "preimage" in r else None
        if preimage is not None and preimage.method not in READ_METHODS:
            self.check.error(self.check.at(r, "preimage"), f"'{where}.preimage' must be a GET or HEAD (it is sent "
                                                           "before the agent's request, and must change nothing)")
        if fidelity == "needs-preimage" and preimage is None:
            self.check.warn(r.pos, f"'{where}' needs a pre-image but has no 'preimage' read; it will never be planned")
        conditional = any(is_condition(name, value.source) for s in steps if s is not None for name, value in s.headers)
        if fidelity != "irreversible" and "guard" not in r and not conditional:
            self.check.warn(r.pos, f"'{where}' has no guard, so the requests it matches are {UNGUARDED}: undoing one "
                                   "needs --force, as it would overwrite a later change. Add a 'guard' that reads the "
                                   "resource, a conditional header (If-Match) to a step, or 'guard: {unneeded: WHY}'")
        twin = self.request(r["twin"], f"{where}.twin", self.check.at(r, "twin")) if "twin" in r else None
        when, effective = self.condition(r, "when", where), self.condition(r, "effective", where)
        methods = self.methods(m, f"{where}.match")
        # A rule may read the pre-image an earlier rule of its pack reads for the same requests (S3's put rules).
        has_pre = preimage is not None or any(earlier is None or methods is None or earlier & methods
                                              for earlier in self.preimage_methods)
        if preimage is not None:
            self.preimage_methods.append(methods)
        if preimage is not None and preimage.method == "HEAD":
            self.head_has_no_body(r, where, {"when": when, "undo": steps, "guard.read": guard.read if guard else None})
        self.reads_what_it_can(r, where, has_pre, {"when": when, "effective": effective, "undo": steps,
                                                   "guard.read": guard.read if guard else None, "preimage": preimage,
                                                   "twin": twin})
        return UndoRule(pack, name, hosts or (), methods,
                        self.globs(m, ("path", "paths"), f"{where}.match", compile_path), fidelity, when, effective,
                        reason, tuple(s for s in steps if s is not None), guard, preimage, twin, unneeded.strip())

    def part_at(self, r: YMap, part: str) -> tuple[int, int]:
        """Where a rule part (`undo`, `guard.read`…) is written: its key's place, else the rule's."""
        key = part.split(".")[0]
        return self.check.at(r, key) if key in r else r.pos

    def head_has_no_body(self, r: YMap, where: str, parts: dict[str, Any]) -> None:
        """An error for a part that reads the body of a pre-image read by HEAD (it is always empty)."""
        for part, value in parts.items():
            sources = " ".join(e.source for e in expressions(value))
            if re.search(r"\bpre\s*\.\s*(body|json|text|form)\b", sources):
                self.check.error(self.part_at(r, part),
                                 f"'{where}.{part}' reads the pre-image's body, but its 'preimage' read is a HEAD, "
                                 "which has none")

    def reads_what_it_can(self, r: YMap, where: str, has_pre: bool, parts: dict[str, Any]) -> None:
        """Errors for a rule part that reads what is never there when it is used: `read` (a guard's answer) outside
        the guard's conditions, `response` or `pre` in the reads and twins made before forwarding, and `pre` in a rule
        with no `preimage` read. Each would fail on every request it matches."""
        for part, value in parts.items():
            used = sorted(reads(value) & UNDO_VARIABLES)
            known = {"request"} if part in ("preimage", "twin") else UNDO_VARIABLES - {"read"}
            if not has_pre:
                known = known - {"pre"}
            for name in (n for n in used if n not in known):
                why = ("it is the guard's answer, known only to 'guard.expect' and 'guard.refused'" if name == "read"
                       else "it is made before the request is forwarded, when only 'request' is known"
                       if part in ("preimage", "twin") else "the rule has no 'preimage' read to fill it")
                self.check.error(self.part_at(r, part),
                                 f"'{where}.{part}' reads '{name}', which it never has: {why}")

    def pack(self, doc: Any, file: str) -> list[UndoRule]:
        p = self.check.mapping(doc, "undo pack", (1, 1), _PACK_KEYS, {"version", "rules"})
        if p is None:
            return []
        self.check.version_one(p)  # true too was taken for 1
        name = self.check.string(p, "name", "name") or Path(file).stem
        rules = [self.rule(name, raw, pos, i) for i, raw, pos in self.check.items(p.get("rules"), "rules",
                                                                                    self.check.at(p, "rules"))]
        return [r for r in rules if r is not None]


def is_undo_pack(text: str) -> bool:
    """Whether a rules file is an undo pack (its rules have `match`) rather than a policy (`allow`/`deny`)."""
    doc, problems = yamlsrc.load(text, "")
    rules = doc.get("rules") if isinstance(doc, dict) and not problems else None
    return isinstance(rules, list) and any(isinstance(r, dict) and "match" in r for r in rules)


def check_pack_text(text: str, file: str) -> tuple[list[UndoRule], list[Problem]]:
    """Read one undo pack; returns its rules (empty if unusable) and every problem found."""
    doc, problems = yamlsrc.load(text, file)
    if problems:
        return [], problems
    reader = _UndoReader(file, text)
    rules = reader.pack(doc, file)
    errors = [p for p in reader.check.problems if p.severity == "error"]
    return ([] if errors else rules), reader.check.problems


def load_packs(paths: list[Path]) -> tuple[UndoRule, ...]:
    """Every rule of every pack, in order; ConfigError with the problems of all files if any is invalid."""
    problems: list[Problem] = []
    rules: list[UndoRule] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(path), 1, 1, f"cannot read undo pack: {exc}"))
            continue
        found, issues = check_pack_text(text, str(path))
        problems += [p for p in issues if p.severity == "error"]
        rules += found
    if problems:
        raise ConfigError(problems)
    return tuple(rules)
