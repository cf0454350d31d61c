"""Policy files: YAML read onto frozen `Policy` values, with every problem reported as `file:line:col`."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from .. import yamlsrc
from ..durations import parse_duration
from ..errors import ConfigError, Problem
from ..globs import Glob, compile_host, compile_path
from ..yamlsrc import Checker, YMap
from .cel import CelSyntaxError, Condition, compile_condition
from .engine import REVIEW_CLASSES, Limit, Policy, PolicySet, Routing, Rule, Wait
from .sql import ALLOW_KEYS as SQL_ALLOW_KEYS
from .sql import DENY_KEYS as SQL_DENY_KEYS
from .sql import SqlRule, SqlRuleReader, compile_sql_condition, is_sql_rule

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_POLICY_KEYS = {"version", "name", "description", "agents", "mode", "rules", "servers", "review"}
_RULE_KEYS = {"name", "allow", "deny", "description", "rewrite"}
_ROUTING_KEYS = {"path_case", "trailing_slash"}
_MATCH_KEYS = {"host", "hosts", "method", "methods", "path", "paths", "agents", "when", "protocol", "ports",
               *_ROUTING_KEYS}
_ALLOW_KEYS = _MATCH_KEYS | {"limit", "duplicate_keys", "hold", "delay"}
_DENY_KEYS = _MATCH_KEYS | {"reason"}
#: key -> (the one value it takes, what leaving it out means)
_FLAGS = {
    "path_case": ("insensitive", "leave it out to match paths as written"),
    "trailing_slash": ("optional", "leave it out to match paths as written"),
    "duplicate_keys": ("accept", "leave it out to refuse a query or form that has a key twice"),
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.#@:/()'-]*")
_PROTOCOL = re.compile(r"[a-z0-9][a-z0-9._/+-]*")


#: How long a `hold` without a `timeout` waits for a person before it is denied.
DEFAULT_HOLD_SECONDS = 600.0


def parse_review(value: Any) -> Wait | None:
    """One `review:` value: `pass` (None), `delay 30s`, `hold` or `hold 10m`."""
    words = value.split() if isinstance(value, str) else []
    try:
        if words == ["pass"]:
            return None
        if len(words) == 2 and words[0] == "delay":
            return Wait("delay", parse_duration(words[1]))
        if words and words[0] == "hold" and len(words) <= 2:
            return Wait("hold", parse_duration(words[1]) if len(words) == 2 else DEFAULT_HOLD_SECONDS)
    except ValueError:
        pass
    raise ValueError(f"must be 'pass', 'delay DURATION', 'hold' or 'hold TIMEOUT' (got {value!r})")


def parse_ports(value: Any) -> frozenset[int]:
    """A port or a list of ports, each 1-65535."""
    ports = value if isinstance(value, list) else [value]
    if not ports or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports):
        raise ValueError(f"must be a port number or a list of them, 1-65535 (got {value!r})")
    return frozenset(ports)


def expression_pos(source_lines: list[str], pos: tuple[int, int], err: CelSyntaxError) -> tuple[int, int]:
    """Map a position inside a CEL expression to the file, for plain and quoted one-line scalars."""
    line, col = pos
    text = source_lines[line - 1] if 0 < line <= len(source_lines) else ""
    first = text[col - 1:col]
    if first in "|>":
        return pos
    skip = 1 if first in "'\"" else 0
    return (line + err.line - 1, (col + skip if err.line == 1 else 1) + err.col - 1)


class RuleReader:
    """Reads the match blocks policies and undo packs share (hosts, methods, paths), reporting `file:line:col`."""

    def __init__(self, file: str, text: str) -> None:
        self.check = Checker(file)
        self.lines = text.splitlines()
        self.conditions: dict[str, Condition] = {}   # by source: rules repeat conditions, compiling one costs 0.1 ms

    def globs(self, m: YMap, keys: tuple[str, str], where: str, make: Any) -> tuple[Glob, ...] | None:
        present = [k for k in keys if k in m]
        if len(present) == 2:
            self.check.error(m.key_pos[keys[1]], f"'{where}' has both '{keys[0]}' and '{keys[1]}'; use one")
        if not present:
            return None
        key = present[0]
        patterns = self.check.strings(m, key, f"{where}.{key}")
        if patterns is None and m.get(key) is None:  # `host:` with its value forgotten had matched every host
            self.check.error(self.check.at(m, key), f"'{where}.{key}' is empty (leave it out to match any)")
            return ()
        if patterns is None:
            return ()
        if not patterns:
            self.check.error(self.check.at(m, key), f"'{where}.{key}' must not be empty (leave it out to match any)")
            return ()
        out = []
        for pattern in patterns:
            try:
                out.append(make(pattern))
            except ValueError as exc:
                self.check.error(self.check.at(m, key), f"'{where}.{key}' {pattern!r} {exc}")
        return tuple(out)

    def methods(self, m: YMap, where: str) -> frozenset[str] | None:
        present = [k for k in ("method", "methods") if k in m]
        if not present:
            return None
        names = self.check.strings(m, present[0], f"{where}.{present[0]}") or []
        if not names:
            self.check.error(self.check.at(m, present[0]), f"'{where}.{present[0]}' must not be empty (use '*' for any)")
        if "*" in names:
            return None
        upper = {n.upper() for n in names}
        for bad in sorted(upper - METHODS):
            expected = ", ".join(sorted(METHODS))
            self.check.error(self.check.at(m, present[0]),
                             f"'{where}.{present[0]}' has unknown HTTP method {bad!r:.80} (expected {expected} or '*')")
        return frozenset(upper & METHODS)

    def limit(self, m: YMap, where: str) -> Limit | None:
        if "limit" not in m:
            return None
        raw = m["limit"]
        if raw is None:  # `limit:` with its value forgotten had left the rule without a limit
            self.check.error(self.check.at(m, "limit"), f"'{where}.limit' is empty (a limit is {{count: N, per: "
                                                        "DURATION}; leave the key out for none)")
            return None
        lm = self.check.mapping(raw, f"{where}.limit", self.check.at(m, "limit"), {"count", "per"}, {"count"})
        if lm is None:
            return None
        count = lm.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            self.check.error(self.check.at(lm, "count"), f"'{where}.limit.count' must be a whole number ≥ 0 (got {count!r})")
            count = 0
        per = self.check.parsed(lm, "per", f"{where}.limit.per", parse_duration)
        return Limit(count, per, str(lm.get("per", "")))

    def rule(self, policy: str, raw: Any, pos: tuple[int, int], index: int, seen: set[str]) -> Rule | SqlRule | None:
        where = f"rules[{index}]"
        r = self.check.mapping(raw, where, pos, _RULE_KEYS, {"name"})
        if r is None:
            return None
        name = self.check.string(r, "name", f"{where}.name") or f"#{index + 1}"
        if "name" in r and not _NAME.fullmatch(name):
            self.check.error(self.check.at(r, "name"),
                             f"'{where}.name' must be a short name of letters, digits, spaces and punctuation (got {name!r})")
        if name in seen:
            self.check.error(self.check.at(r, "name"), f"rule name '{name}' is used twice in this policy; limits are counted by name")
        seen.add(name)
        effects = [k for k in ("allow", "deny") if k in r]
        if len(effects) != 1:
            self.check.error(r.pos, f"'{where}' ('{name}') must have exactly one of 'allow' or 'deny'")
            return None
        effect = effects[0]
        rewrite = r.get("rewrite")
        if rewrite is not None and (effect != "allow" or rewrite != "reversible"):
            self.check.error(self.check.at(r, "rewrite"), f"'{where}.rewrite' can only be 'reversible', on an allow "
                                                          f"rule (got {rewrite!r})")
        if is_sql_rule(r[effect]):
            return self.sql_rule(policy, name, effect, r, where)
        allowed = _ALLOW_KEYS if effect == "allow" else _DENY_KEYS
        m = self.check.mapping(r[effect], f"{where}.{effect}", self.check.at(r, effect), allowed)
        if m is None:
            return None
        hosts = self.globs(m, ("host", "hosts"), f"{where}.{effect}", compile_host)
        if effect == "allow" and hosts is None:
            self.check.error(m.pos, f"'{where}.allow' must name a 'host' (allow rules never apply to every host)")
        paths = self.globs(m, ("path", "paths"), f"{where}.{effect}", compile_path)
        if paths is None:
            for key in sorted(_ROUTING_KEYS & set(m)):
                self.check.error(self.check.at(m, key), f"'{where}.{effect}.{key}' applies to the rule's 'path', "
                                                        "which it does not have")
        when = None
        if "when" in m:
            source = m["when"]
            try:
                when = self.conditions.get(source) if isinstance(source, str) else None
                if when is None:
                    when = self.conditions[source] = compile_condition(source)
            except CelSyntaxError as exc:
                line, col = expression_pos(self.lines, self.check.at(m, "when"), exc)
                self.check.error((line, col), f"'{where}.{effect}.when' {exc}")
        agents = self.check.narrowing(m, "agents", f"{where}.{effect}.agents")
        protocol = self.protocol(m, f"{where}.{effect}", rewrite is not None)
        for key in ("hold", "delay") if protocol is not None else ():
            if key in m:
                self.check.error(self.check.at(m, key), f"'{where}.{effect}.{key}' applies to HTTP requests only: a "
                                                        "stream cannot wait for a person")
        return Rule(
            policy=policy,
            name=name,
            effect=effect,  # type: ignore[arg-type]
            hosts=hosts or (),
            methods=self.methods(m, f"{where}.{effect}"),
            paths=paths,
            agents=agents,
            when=when,
            limit=self.limit(m, f"{where}.{effect}") if effect == "allow" else None,
            reason=self.check.string(m, "reason", f"{where}.deny.reason") if effect == "deny" else None,
            rewrite=rewrite == "reversible" and effect == "allow",
            protocol=protocol,
            ports=self.check.parsed(m, "ports", f"{where}.{effect}.ports", parse_ports),
            routing=self.routing(m, f"{where}.{effect}"),
            accepts_duplicate_keys=self.flag(m, "duplicate_keys", f"{where}.{effect}"),
            wait=self.wait(m, f"{where}.{effect}") if effect == "allow" else None,
        )

    def sql_rule(self, policy: str, name: str, effect: str, r: YMap, where: str) -> SqlRule | None:
        """A rule over SQL statements (its block names a `database`), for the database gateway."""
        if "rewrite" in r:
            self.check.error(self.check.at(r, "rewrite"), f"'{where}.rewrite' applies only to HTTP requests")
        keys = SQL_ALLOW_KEYS if effect == "allow" else SQL_DENY_KEYS
        m = self.check.mapping(r[effect], f"{where}.{effect}", self.check.at(r, effect), keys)
        if m is None:
            return None
        return SqlRuleReader(self.check, self.sql_condition, self.limit, self.wait).rule(policy, name, effect, m,
                                                                                         f"{where}.{effect}")

    def sql_condition(self, m: YMap, key: str, where: str) -> Condition | None:
        source = m[key]
        try:
            return compile_sql_condition(source)
        except CelSyntaxError as exc:
            line, col = expression_pos(self.lines, self.check.at(m, key), exc)
            self.check.error((line, col), f"'{where}.{key}' {exc}")
            return None

    def wait(self, m: YMap, where: str) -> Wait | None:
        """`hold: {timeout: 10m, on_timeout: deny}` (or `hold: true`) or `delay: 30s` on an allow rule."""
        if "hold" in m and "delay" in m:
            self.check.error(self.check.at(m, "delay"), f"'{where}' has both 'hold' and 'delay'; use one")
        if "delay" in m:
            seconds = self.check.parsed(m, "delay", f"{where}.delay", parse_duration)
            return Wait("delay", seconds) if seconds is not None else None
        if "hold" not in m:
            return None
        raw = m["hold"]
        if raw is True:
            return Wait("hold", DEFAULT_HOLD_SECONDS)
        spec = self.check.mapping(raw, f"{where}.hold", self.check.at(m, "hold"), {"timeout", "on_timeout"})
        if spec is None:
            return None
        seconds = self.check.parsed(spec, "timeout", f"{where}.hold.timeout", parse_duration) if "timeout" in spec \
            else DEFAULT_HOLD_SECONDS
        then = spec.get("on_timeout", "deny")
        if then not in ("deny", "send"):
            self.check.error(self.check.at(spec, "on_timeout"),
                             f"'{where}.hold.on_timeout' must be 'deny' or 'send' (got {then!r})")
            then = "deny"
        return Wait("hold", seconds or DEFAULT_HOLD_SECONDS, then)

    def review(self, p: YMap) -> tuple[tuple[str, Wait | None], ...]:
        """`review:`, what each undo class does for the policy's agents: `pass`, `delay 30s`, `hold` or `hold 10m`."""
        raw = p.get("review")
        spec = None if raw is None else self.check.mapping(raw, "review", self.check.at(p, "review"),
                                                            set(REVIEW_CLASSES))
        out: list[tuple[str, Wait | None]] = []
        for undo_class in REVIEW_CLASSES:
            if spec is None or undo_class not in spec:
                continue
            value, pos = spec[undo_class], self.check.at(spec, undo_class)
            try:
                out.append((undo_class, parse_review(value)))
            except ValueError as exc:
                self.check.error(pos, f"'review.{undo_class}' {exc}")
        return tuple(out)

    def flag(self, m: YMap, key: str, where: str) -> bool:
        """A key of `_FLAGS`: True when it is given its one value; any other value is a problem."""
        if key not in m:
            return False
        value, absent = _FLAGS[key]
        given: object = m[key]
        if given != value:
            self.check.error(self.check.at(m, key), f"'{where}.{key}' can only be '{value}' (got {given!r}); {absent}")
        return given == value

    def routing(self, m: YMap, where: str) -> Routing:
        """`path_case: insensitive` and `trailing_slash: optional`: how a server routes paths."""
        return Routing(self.flag(m, "path_case", where), self.flag(m, "trailing_slash", where))

    def servers(self, p: YMap) -> tuple[tuple[Glob, Routing], ...]:
        """`servers:`, host globs mapped to how their servers route paths, for the rules of every policy."""
        raw = p.get("servers")
        hosts = None if raw is None else self.check.mapping(raw, "servers", self.check.at(p, "servers"),
                                                             set(raw) if isinstance(raw, YMap) else set())
        if hosts is None:
            return ()
        return tuple(server for host in hosts if (server := self.server(hosts, host)) is not None)

    def server(self, hosts: YMap, host: Any) -> tuple[Glob, Routing] | None:
        """One entry of `servers:`: a host glob, and `path_case`, `trailing_slash` or both."""
        where = f"servers.{host}"
        declared = self.check.mapping(hosts[host], where, self.check.at(hosts, host), _ROUTING_KEYS)
        try:
            glob = compile_host(host)
        except ValueError as exc:
            self.check.error(hosts.key_pos[host], f"'servers' key {host!r} {exc}")
            return None
        if declared is not None and not declared:
            self.check.error(declared.pos, f"'{where}' must declare 'path_case', 'trailing_slash' or both")
        return (glob, self.routing(declared, where)) if declared else None

    def protocol(self, m: YMap, where: str, rewrite: bool) -> str | None:
        """`protocol:` names what the proxy cannot inspect: `tcp` (raw TCP in a tunnel) or an HTTP Upgrade token."""
        value = self.check.string(m, "protocol", f"{where}.protocol")
        if value is None or value.lower() == "http":
            return None
        value = value.lower()
        pos = self.check.at(m, "protocol")
        if value == "websocket":
            self.check.error(pos, f"'{where}.protocol' websocket is HTTP that goex-proxy inspects: ordinary rules "
                                  "decide it; leave 'protocol' out")
        elif not _PROTOCOL.fullmatch(value):
            self.check.error(pos, f"'{where}.protocol' must be 'tcp' or an HTTP Upgrade token such as 'h2c' "
                                  f"(got {value!r})")
        elif value == "tcp":
            for key in ("method", "methods", "path", "paths", "when", "path_case", "trailing_slash", "duplicate_keys"):
                if key in m:
                    self.check.error(self.check.at(m, key), f"'{where}.{key}': a raw TCP stream has no method, path "
                                                            "or body to match; leave it out")
        if rewrite:
            self.check.error(pos, f"'{where}.protocol': 'rewrite' applies only to HTTP requests")
        return value

    def policy(self, doc: Any, file: str) -> Policy | None:
        p = self.check.mapping(doc, "policy", (1, 1), _POLICY_KEYS, {"version", "rules"})
        if p is None:
            return None
        self.check.version_one(p)  # null and true were taken
        name = self.check.string(p, "name", "name")
        if name is not None and (not name or not name.isprintable()):  # it starts every line about the policy
            self.check.error(self.check.at(p, "name"), f"'name' must be printable text (got {name!r:.80})")
        name = name or Path(file).stem
        mode = p.get("mode", "enforce")
        if mode not in ("enforce", "report"):
            self.check.error(self.check.at(p, "mode"), f"'mode' must be 'enforce' or 'report' (got {mode!r})")
        agents = self.check.narrowing(p, "agents", "agents")
        seen: set[str] = set()
        rules = [self.rule(name, raw, pos, i, seen) for i, raw, pos in self.check.items(p.get("rules"), "rules", self.check.at(p, "rules"))]
        sql_rules = tuple(r for r in rules if isinstance(r, SqlRule))
        if mode == "report" and sql_rules:
            self.check.warn(self.check.at(p, "mode"), "a report-mode policy's SQL rules are not applied (the database "
                                                      "gateway enforces only enforce-mode policies)")
        if mode == "report" and ("review" in p or any(isinstance(r, (Rule, SqlRule)) and r.wait for r in rules)):
            self.check.warn(self.check.at(p, "mode"), "a report-mode policy never holds or delays a request: its "
                                                      "'review', 'hold' and 'delay' have no effect")
        return Policy(
            name=name,
            file=file,
            rules=tuple(r for r in rules if isinstance(r, Rule)),
            agents=agents,
            mode=mode if mode in ("enforce", "report") else "enforce",
            servers=self.servers(p),
            review=self.review(p),
            sql_rules=sql_rules,
        )


def check_policy_text(text: str, file: str) -> tuple[Policy | None, list[Problem]]:
    """Read one policy document; returns the policy (None if unusable) and every problem found."""
    doc, problems = yamlsrc.load(text, file)
    if problems:
        return None, problems
    reader = RuleReader(file, text)
    policy = reader.policy(doc, file)
    errors = [p for p in reader.check.problems if p.severity == "error"]
    return (None if errors else policy), reader.check.problems


def load_policy(path: Path, agents_override: frozenset[str] | None = None, display: str | None = None) -> Policy:
    """Load one policy file or raise ConfigError with every problem in it."""
    file = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(file, 1, 1, f"cannot read policy file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(file, 1, 1, f"policy file is not UTF-8 text (byte {exc.start})")]) from None
    policy, problems = check_policy_text(text, file)
    if policy is None:
        raise ConfigError(problems)
    if agents_override is not None:
        policy = dataclasses.replace(policy, agents=agents_override)
    return policy


def load_policy_set(sources: list[tuple[Path, frozenset[str] | None]]) -> PolicySet:
    """Load every policy, collecting the problems of all files before failing; names must be unique."""
    problems: list[Problem] = []
    policies: list[Policy] = []
    for path, agents in sources:
        try:
            policy = load_policy(path, agents)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if any(p.name == policy.name for p in policies):
            problems.append(Problem(str(path), 1, 1, f"policy name '{policy.name}' is already used by another policy file"))
        policies.append(policy)
    if problems:
        raise ConfigError(problems)
    return PolicySet.of(policies)
