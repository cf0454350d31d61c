"""Which kinds of SQL statement undo can take back: the one answer the audit row's undo class, `review:` and `policy
check`'s warning about irreversible writes without a limit all ask (row-level undo changes it when it lands)."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import Problem
from .engine import Policy
from .sqlparse import KINDS

#: Kinds that keep nothing changed: reads (COPY TO; a COPY FROM is an `insert` too), transaction control, settings.
CHANGES_NOTHING = frozenset({"select", "copy", "transaction", "set"})
#: Kinds that change what the database keeps.
WRITING_KINDS = frozenset(KINDS) - CHANGES_NOTHING


def reversible_kinds(transaction: str = "auto") -> frozenset[str]:
    """The writing kinds undo can take back on a database in this `transaction:` mode: none yet (no row-level undo,
    no held transaction). A kind belongs here only if every statement of it can be taken back: TRUNCATE is a
    `delete` whose rows no capture by RETURNING sees, and `ddl` and `other` never are."""
    return frozenset()


def irreversible_kinds(kinds: Iterable[str], transaction: str = "auto") -> frozenset[str]:
    """Those of `kinds` that write something undo cannot take back."""
    return (frozenset(kinds) & WRITING_KINDS) - reversible_kinds(transaction)


def unlimited_irreversible(policy: Policy) -> list[Problem]:
    """A warning for each SQL allow rule that lets an agent run statements undo cannot take back, with no limit on
    them: one such statement (a DELETE without a condition it did not think of, a DROP) may destroy what no one can
    restore, and nothing stops the next."""
    out = []
    for rule in policy.sql_rules:
        if rule.effect != "allow" or rule.limit is not None or rule.statements is None:
            continue
        if rule.wait is not None and rule.wait.kind == "hold" and rule.wait.on_timeout == "deny":
            continue  # a person decides each one
        kinds = irreversible_kinds(rule.statements)
        where = ', '.join(sorted(rule.databases or ()))
        if kinds:
            out.append(Problem(policy.file, 1, 1, f"SQL rule '{rule.name}' allows {', '.join(sorted(kinds))} on "
                                                  f"{where} with no limit, and undo cannot take them back (add a "
                                                  "'limit', or 'hold' them for a person)", "warning"))
        elif rule.functions:  # a function may change anything, whatever the statement calling it is
            out.append(Problem(policy.file, 1, 1, f"SQL rule '{rule.name}' lets statements call "
                                                  f"{', '.join(sorted(rule.functions))} on {where} with no limit, and "
                                                  "undo cannot take back what a function changes (add a 'limit', or "
                                                  "'hold' them for a person)", "warning"))
    return out
