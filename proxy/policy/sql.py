"""SQL rules (`allow: {database: ..., statements: [...]}`) read from policy files, and the pure, default-deny decision
over parsed statements: every statement of a message must be allowed, a deny beats any allow."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..yamlsrc import Checker, YMap
from .cel import CelEvalError, CelSyntaxError, Condition, compile_condition
from .engine import Decision, Limit, Policy, Wait, strictest
from .sqlparse import KINDS, Statement

#: What a SQL rule's `when` may read.
SQL_VARIABLES = frozenset({"statement", "agent", "database", "now"})
_MATCH_KEYS = {"database", "databases", "statements", "tables", "agents", "when"}
ALLOW_KEYS = _MATCH_KEYS | {"columns", "functions", "limit", "hold", "delay"}
DENY_KEYS = _MATCH_KEYS | {"reason"}
#: The rule that lets transaction control through (BEGIN, COMMIT, ROLLBACK, SAVEPOINT): it changes nothing itself.
TRANSACTION_RULE = "builtin/transaction-control"
#: Settings that change how the server reads SQL text. The gateway reads it as UTF-8 with standard-conforming strings
#: and pins both when it logs in upstream: changed, the server would split and quote the text otherwise than the
#: statements decided (a Shift-JIS byte before a backslash ends an E'' string the gateway reads on).
PINNED_SETTINGS = frozenset({"client_encoding", "standard_conforming_strings"})


def is_sql_rule(spec: Any) -> bool:
    """Whether a rule's allow/deny block is a SQL rule (it names a database)."""
    return isinstance(spec, dict) and ("database" in spec or "databases" in spec)


@dataclass(frozen=True)
class SqlRule:
    """One allow or deny rule over statements to a database; every criterion it has must match."""

    policy: str
    name: str
    effect: str                              # "allow" or "deny"
    databases: frozenset[str] | None         # None: any (deny rules only)
    statements: frozenset[str] | None        # kinds; None: any (deny rules only)
    tables: frozenset[str] | None = None     # None: any
    columns: frozenset[str] | None = None    # allow only; None: any
    functions: frozenset[str] = frozenset()  # allow only: functions it lets a statement call besides the safe ones
    agents: frozenset[str] | None = None
    when: Condition | None = None
    reason: str | None = None
    limit: Limit | None = None               # allow only: at most so many statements it allows, per agent
    wait: Wait | None = None                 # allow only: `hold:` or `delay:`, as for HTTP requests

    @property
    def key(self) -> str:
        return f"{self.policy}/{self.name}"

    def matches(self, database: str, agent: str, statement: Statement, variables: dict[str, Any]) -> bool:
        if self.databases is not None and database not in self.databases:
            return False
        if self.agents is not None and agent not in self.agents:
            return False
        if self.effect == "allow" and not self._allows(statement):
            return False
        if self.effect == "deny" and not self._touches(statement):
            return False
        if self.when is None:
            return True
        try:
            return self.when.evaluate(variables)
        except CelEvalError:
            return self.effect == "deny"  # fail closed: a deny whose condition fails applies, an allow does not

    def _allows(self, statement: Statement) -> bool:
        """Everything the statement does is within this allow rule: its kinds, tables, columns and functions."""
        return self.covers(statement) and not statement.unseen_functions(self.functions)

    def covers(self, statement: Statement) -> bool:
        """The statement's kinds, tables and columns are within this allow rule (its functions aside)."""
        if self.statements is None or not statement.kinds <= self.statements:
            return False
        if self.tables is not None and (statement.opaque or not all(_table_in(t, self.tables) for t in statement.tables)):
            return False
        return self.columns is None or "*" in self.columns or set(statement.columns) <= self.columns

    def _touches(self, statement: Statement) -> bool:
        """The statement does one of the things this deny rule names."""
        if self.statements is not None and not statement.kinds & self.statements:
            return False
        return self.tables is None or statement.opaque or any(_table_in(t, self.tables) for t in statement.tables)


def _table_in(table: str, names: frozenset[str]) -> bool:
    """`orders` or `public.orders` written in a statement, against a rule's names (unqualified `public` matches both)."""
    if table in names:  # both as PostgreSQL folds them: unquoted lower case, a quoted name as written
        return True
    schema, _, bare = table.rpartition(".")
    return schema in ("", "public") and (bare in names or f"public.{bare}" in names)


def decide(policies: Iterable[Policy], database: str, agent: str, statements: tuple[Statement, ...],
           now: float | None = None) -> tuple[Decision, Statement | None]:
    """Allow only if every statement is allowed by an enforced policy's rule and denied by none; else the first
    statement refused and why. A message with no statement (empty) is allowed: it runs nothing."""
    rules = [r for p in policies if p.applies_to(agent) and p.mode == "enforce" for r in p.sql_rules]
    allowed_by: list[SqlRule] = []
    for statement in statements:
        variables = {"statement": statement.as_cel(), "agent": agent, "database": database,
                     "now": now if now is not None else time.time()}
        denied = next((r for r in rules if r.effect == "deny" and r.matches(database, agent, statement, variables)),
                      None)
        if denied is not None:
            return Decision("deny", denied.reason or f"denied by rule '{denied.name}'", denied.key), statement
        if statement.kind == "set" and (statement.setting or "").lower() in PINNED_SETTINGS:
            return Decision("deny", f"{statement.setting} is fixed by goex-proxy (it reads statements as UTF-8 with "
                                    "standard-conforming strings)"), statement
        if statement.copy_program:
            return Decision("deny", "COPY to or from a file or program on the database server is never relayed "
                                    "(COPY ... FROM STDIN and TO STDOUT can be allowed)"), statement
        if statement.kinds == {"transaction"}:
            allowed_by.append(_TRANSACTION)
            continue
        allow = next((r for r in rules if r.effect == "allow" and r.matches(database, agent, statement, variables)),
                     None)
        if allow is None:
            return Decision("deny", _why_not(rules, database, agent, statement)), statement
        allowed_by.append(allow)
    by = list(dict.fromkeys(allowed_by))
    rule = ", ".join(r.key for r in by) or None
    # Each statement of a message counts against the limit of the rule that allowed it (a limit on deletes is not
    # escaped by sending them together), and the message waits as its strictest rule says.
    return Decision("allow", "allowed" if rule else "nothing to run", rule,
                    count_limits=tuple(r.key for r in allowed_by if r.limit is not None),
                    wait=strictest(r.wait for r in by)), None


def limits_of(policies: Iterable[Policy], keys: Iterable[str]) -> tuple[tuple[str, Limit], ...]:
    """The limits of these SQL rules (by key), as caps the audit writer checks against every proxy's hits."""
    wanted = set(keys)
    return tuple((r.key, r.limit) for p in policies if p.mode == "enforce" for r in p.sql_rules
                 if r.limit is not None and r.key in wanted)


def _why_not(rules: list[SqlRule], database: str, agent: str, statement: Statement) -> str:
    """Why no rule allows a statement, in words a person at the client can act on."""
    near = [r for r in rules if r.effect == "allow" and (r.databases is None or database in r.databases)
            and (r.agents is None or agent in r.agents) and r.covers(statement)]
    unseen = [f for f in statement.unseen_functions() if not any(f in r.functions for r in near)]
    if unseen:
        return (f"the statement calls {', '.join(unseen)}, which the policy cannot see through (a rule may name it "
                "in 'functions:')")
    what = "/".join(sorted(statement.kinds)).upper()
    on = f" on {', '.join(statement.tables)}" if statement.tables else ""
    if statement.opaque:
        on += " (it acts beyond the tables it names: only a rule without 'tables' can allow it)"
    return f"no rule allows {what}{on} on database '{database}' for agent '{agent}' (default deny)"


#: What allows transaction control (it changes nothing itself, so it has no limit and never waits).
_TRANSACTION = SqlRule("builtin", "transaction-control", "allow", None, frozenset({"transaction"}))


class SqlRuleReader:
    """Reads a SQL rule's block, reporting problems on the policy file's checker."""

    def __init__(self, check: Checker, compile_when: Any, limit: Any = None, wait: Any = None) -> None:
        self.check = check
        self.compile_when = compile_when   # (YMap, key, where) -> Condition | None, with positions in the file
        self.limit, self.wait = limit, wait  # (YMap, where) -> Limit | Wait | None: read as for HTTP rules

    def names(self, m: YMap, key: str, where: str, lower: bool = True) -> frozenset[str] | None:
        if key not in m:
            return None
        raw = m[key]
        values = [raw] if isinstance(raw, str) else self.check.strings(m, key, f"{where}.{key}")
        if values is None:
            return frozenset()
        if not values:
            self.check.error(self.check.at(m, key), f"'{where}.{key}' must not be empty (leave it out to match any)")
        return frozenset(v.lower() if lower else v for v in values)

    def rule(self, policy: str, name: str, effect: str, m: YMap, where: str) -> SqlRule:
        if "database" in m and "databases" in m:
            self.check.error(self.check.at(m, "databases"), f"'{where}' has both 'database' and 'databases'; use one")
        databases = self.names(m, "database" if "database" in m else "databases", where, lower=False)
        if databases is not None and "*" in databases:
            if effect == "allow":
                self.check.error(self.check.at(m, "database"), f"'{where}.database' must name databases: an allow "
                                                                "rule never applies to every database")
            databases = None
        statements = self.names(m, "statements", where)
        if statements is not None:
            for bad in sorted(statements - set(KINDS)):
                self.check.error(self.check.at(m, "statements"), f"'{where}.statements' has unknown kind '{bad}' "
                                                                 f"(expected {', '.join(KINDS)})")
        elif effect == "allow":
            self.check.error(m.pos, f"'{where}' must list the 'statements' it allows ({', '.join(KINDS)})")
        agents = self.check.narrowing(m, "agents", f"{where}.agents")
        return SqlRule(
            policy=policy, name=name, effect=effect, databases=databases,
            statements=statements, tables=self.names(m, "tables", where, lower=False),
            columns=self.names(m, "columns", where, lower=False) if effect == "allow" else None,
            functions=(self.names(m, "functions", where, lower=False) or frozenset()) if effect == "allow"
            else frozenset(),
            agents=agents,
            when=self.compile_when(m, "when", where) if "when" in m else None,
            reason=self.check.string(m, "reason", f"{where}.reason") if effect == "deny" else None,
            limit=self.limit(m, where) if effect == "allow" and self.limit is not None else None,
            wait=self.wait(m, where) if effect == "allow" and self.wait is not None else None,
        )


def compile_sql_condition(source: Any) -> Condition:
    """A SQL rule's `when`: CEL over `statement`, `agent`, `database` and `now`."""
    if not isinstance(source, str):
        raise CelSyntaxError(f"must be a CEL expression (got {type(source).__name__})")
    return compile_condition(source, SQL_VARIABLES, library=False)
