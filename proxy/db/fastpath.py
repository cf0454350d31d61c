"""What keeps a statement's trip through the gateway short: which messages only read (recorded without waiting for
the commit), decisions remembered while the policies stay the same, and long SQL parsed off the event loop."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import re
from collections.abc import Iterable
from typing import Any

from ..policy.engine import Decision, Policy
from ..policy.sql import decide
from ..policy.sqlparse import SqlError, Statement, parse

#: SQL longer than this is parsed in a thread: pglast takes milliseconds over it, which the event loop (every other
#: connection, and `run`'s HTTP proxy beside it) would otherwise wait out.
THREAD_PARSE_CHARS = 64 * 1024
#: Decisions kept per gateway; the least recently used goes first.
CACHED_DECISIONS = 4096
#: A `when` that can read the clock: its decision may differ from one second to the next, so none is kept.
_READS_CLOCK = re.compile(r"\bnow\b")


def only_reads(statements: tuple[Statement, ...]) -> bool:
    """Whether every statement of a message only reads: kind select and nothing else (`SELECT ... FOR UPDATE` counts
    as update, a data-modifying CTE as what it does), calling no function beyond the built-in safe ones (a function a
    rule lets through may write: `nextval`, user code). Such a message's row need not be committed before it is sent."""
    return bool(statements) and all(s.kinds == {"select"} and not s.unseen_functions() for s in statements)


class QueuedReads:
    """A session's reads whose rows were queued without waiting for their commit: a row that could not be written is
    remembered (`failed`), and the session refuses what follows. (Their outcomes are queued as any other: after the
    row, often into the same transaction; one whose row was not written fails alone.)"""

    def __init__(self) -> None:
        self.failed: str | None = None

    def add(self, written: concurrent.futures.Future[Any]) -> None:
        written.add_done_callback(self._done)

    def _done(self, written: concurrent.futures.Future[Any]) -> None:  # in the writer's thread
        if written.exception() is not None:
            self.failed = str(written.exception())


async def parse_statements(sql: str) -> tuple[tuple[Statement, ...], str | None]:
    """The statements of `sql`, or why it does not parse; a long text in a thread of its own."""
    try:
        if len(sql) > THREAD_PARSE_CHARS:
            return await asyncio.to_thread(parse, sql), None
        return parse(sql), None
    except SqlError as exc:
        return (), str(exc)


class DecisionCache:
    """The SQL rules' decisions by (database, agent, SQL text), for the one policy set they were made under: another
    set (a reload makes a new one) starts afresh, so an edited policy applies to the next statement. The decision is a
    pure function of those (the text gives the statements) unless a rule's `when` reads `now`; with such a rule in
    the set, nothing is kept."""

    def __init__(self, size: int = CACHED_DECISIONS) -> None:
        self.size = size
        self._policies: tuple[Policy, ...] | None = None
        self._keeps = False
        self._entries: collections.OrderedDict[tuple[str, str, str], Decision] = collections.OrderedDict()

    def decide(self, policies: tuple[Policy, ...], database: str, agent: str, sql: str,
               statements: tuple[Statement, ...]) -> Decision:
        if policies is not self._policies:
            self._policies, self._keeps = policies, not _reads_clock(policies)
            self._entries.clear()
        if not self._keeps:
            return decide(policies, database, agent, statements)[0]
        key = (database, agent, sql)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        decision = decide(policies, database, agent, statements)[0]
        self._entries[key] = decision
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return decision


def _reads_clock(policies: Iterable[Policy]) -> bool:
    """Whether any SQL rule's `when` mentions `now` (a string that says it counts too: only ever keeps less)."""
    return any(rule.when is not None and _READS_CLOCK.search(rule.when.source)
               for policy in policies for rule in policy.sql_rules)
