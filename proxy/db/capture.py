"""Row capture for undo, planned over PostgreSQL's parser (pglast) with no I/O: which table a write changes, and the
statement rewritten so that the server hands back each changed row's before- and after-image in the same statement
(so atomically with it), or why its rows cannot be captured exactly (then it is irreversible)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream, maybe_double_quote_name

#: The statements whose rows can be captured.
_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)
#: Whether the agent's session prints floats, intervals and dates so that they read back as the same values: a client
#: may start up with extra_float_digits below 1 (rounded floats), IntervalStyle sql_standard (`-1 2:00:00` is read
#: back as -1 day +2 hours) or DateStyle `SQL, DMY` (a daterange's `04/03/2024` is read back as April 3rd), and undo
#: would put back other values than the statement changed.
EXACT_PRINT = ("pg_catalog.current_setting('extra_float_digits')::int >= 1 "
               "AND pg_catalog.current_setting('IntervalStyle') = 'postgres' "
               "AND pg_catalog.current_setting('DateStyle') LIKE 'ISO,%'")
#: What the session prints by, in the failure for it (`extra_float_digits|IntervalStyle|DateStyle`).
_PRINTED = " || '|' || ".join(f"pg_catalog.current_setting('{name}')"
                              for name in ("extra_float_digits", "IntervalStyle", "DateStyle"))
_SEARCH_PATH = "pg_catalog.current_setting('search_path')"
#: Why a captured statement may fail in the server, each checked row by row inside it (so the class it was planned
#: with, exact, holds: it is captured or changes nothing): more rows than the bound; the session finds another table
#: by the name than the one the catalog was read of (a search_path of its own); the session prints values inexactly
#: (EXACT_PRINT: a SET, or set_config, since it started). The agent may change either at any time, so the plan can
#: only check them as the statement runs.
FAILURES = ("bound", "table", "print")


def prints_exactly(name: str, value: str) -> bool:
    """Whether a client's startup setting leaves values printed as EXACT_PRINT needs (the others are not passed on:
    a statement planned exact would only turn out irreversible once sent, past a `review:` that holds those)."""
    if name == "extra_float_digits":
        return value.strip().lstrip("+").isdigit() and int(value) >= 1
    if name == "IntervalStyle":
        return value.strip().lower() == "postgres"
    if name == "DateStyle":  # ISO output, with any input order (which ISO output does not use)
        parts = {part.strip().lower() for part in value.split(",")}
        return "iso" in parts and parts <= {"iso", "mdy", "dmy", "ymd", "us", "euro", "european", "noneuro",
                                            "noneuropean"}
    return True


@dataclass(frozen=True)
class Target:
    """The table a write names, as written (schema None: found by the session's search_path)."""

    schema: str | None
    relname: str

    @property
    def quoted(self) -> str:
        name = maybe_double_quote_name(self.relname)
        return f"{maybe_double_quote_name(self.schema)}.{name}" if self.schema else name


@dataclass(frozen=True)
class Table:
    """What the catalog says of a table: its schema-qualified name, primary key, and why its rows cannot be captured
    exactly (triggers, cascading foreign keys, no primary key, ...), None when they can."""

    schema: str
    relname: str
    key: tuple[str, ...]
    problem: str | None = None
    oid: int = 0       # its pg_class oid: the table the agent's session finds by the name must be this one

    @property
    def quoted(self) -> str:
        return f"{maybe_double_quote_name(self.schema)}.{maybe_double_quote_name(self.relname)}"


@dataclass(frozen=True)
class Capture:
    """A write rewritten to hand back its rows' images in one last result column named `marker`: for DELETE the
    deleted rows, for INSERT the inserted rows, for UPDATE [before, after] pairs. `returning`: whether the agent's
    statement had a RETURNING of its own (else the rows are not the agent's to see at all)."""

    sql: str
    kind: str          # insert, update, delete
    table: Table
    marker: str
    returning: bool


def target(sql: str) -> Target | str:
    """The one table a single INSERT, UPDATE or DELETE changes, or why its rows cannot be captured (a reason)."""
    node = _single(sql)
    if isinstance(node, str):
        return node
    relation = node.relation
    return Target(relation.schemaname or None, relation.relname)


def _single(sql: str) -> Any:
    """The one write statement's tree (pglast's nodes are typed loosely), or why it is not captured."""
    try:
        parsed = parse_sql(sql)
    except ParseError as exc:
        return f"not parsed: {exc}"
    if len(parsed) != 1:
        return "several statements in one message: their rows are not captured one by one"
    node = parsed[0].stmt
    if not isinstance(node, _WRITES):
        return f"{type(node).__name__.removesuffix('Stmt').upper() or 'this statement'}: no rows to capture"
    if node.relation is None or node.relation.catalogname:
        return "a table in another database"
    for cte in (node.withClause.ctes or () if node.withClause else ()):
        if not isinstance(cte.ctequery, ast.SelectStmt):
            return "a data-modifying WITH: the rows its other statements change are not captured"
    return node


def plan(sql: str, table: Table, marker: str, bound: int = 10000) -> Capture | str:
    """`sql` rewritten to capture its rows on `table` (what the catalog says of the table `target` named), or why
    it cannot be captured exactly. `marker` is a name the agent cannot guess (the session's), for the added column
    and anything else added to the statement. A statement that changes more than `bound` rows fails (nothing
    changed) with an error `failure` reads, as does one the session's settings or search_path would leave uncaptured."""
    node = _single(sql)
    if isinstance(node, str):
        return node
    if table.problem is not None:
        return table.problem
    if not table.key:
        return f"table {table.quoted} has no primary key: its rows cannot be found again to be restored"
    ref = node.relation.alias.aliasname if node.relation.alias else node.relation.relname
    returning = node.returningClause is not None and bool(node.returningClause.exprs)
    if isinstance(node, ast.InsertStmt):
        if node.onConflictClause is not None and node.onConflictClause.action == enums.OnConflictAction.ONCONFLICT_UPDATE:
            return "INSERT ... ON CONFLICT DO UPDATE: the rows it updates instead are not captured"
        image = f"pg_catalog.to_jsonb({_q(ref)}.*)"
        kind = "insert"
    elif isinstance(node, ast.DeleteStmt):
        if _current_of(node.whereClause):
            return "DELETE ... WHERE CURRENT OF a cursor"
        image = f"pg_catalog.to_jsonb({_q(ref)}.*)"
        kind = "delete"
    else:
        problem = _update_problem(node, table)
        if problem is not None:
            return problem
        image = _update_capture(node, table, ref, marker)
        kind = "update"
    # The added column goes in as a placeholder name, put in place as text after the statement is printed again:
    # printing an expression this size from its tree costs more than all the rest of the plan.
    placeholder = f"{marker}_image"
    added = ast.ResTarget(name=marker, val=ast.ColumnRef(fields=(ast.String(sval=placeholder),)))
    if node.returningClause is None:
        node.returningClause = ast.ReturningClause(exprs=(added,))
    else:
        node.returningClause.exprs = (*node.returningClause.exprs, added)
    head, found, tail = RawStream()(node).rpartition(placeholder)
    assert found, "the placeholder is printed as itself"
    written = Target(node.relation.schemaname or None, node.relation.relname)
    image = f"CASE WHEN {_literal(written.quoted)}::pg_catalog.regclass::pg_catalog.oid <> {int(table.oid)} " \
            f"THEN {_fail('table', marker, _SEARCH_PATH)} " \
            f"WHEN NOT ({EXACT_PRINT}) THEN {_fail('print', marker, _PRINTED)} ELSE {image} END"
    return Capture(head + _bounded(image, marker, bound) + tail, kind, table, marker, returning)


def _update_problem(node: Any, table: Table) -> str | None:
    if node.fromClause and node.returningClause is not None and any(_star(t.val) for t in node.returningClause.exprs):
        return "UPDATE ... FROM ... RETURNING *: not captured (the star would take in the rows' images too)"
    if _current_of(node.whereClause):
        return "UPDATE ... WHERE CURRENT OF a cursor"
    set_columns = {t.name for t in node.targetList}
    if set_columns & set(table.key):
        return f"UPDATE sets a primary-key column ({', '.join(sorted(set_columns & set(table.key)))}): the row " \
               "would not be found again by its key"
    return None


def _update_capture(node: Any, table: Table, ref: str, marker: str) -> str:
    """Add a CTE that locks and reads the rows the WHERE picks (their before-images, FOR UPDATE, so that a row
    changed meanwhile is read as it is when updated), joined by primary key: returns the [before, after] expression.
    Every updated row is one of the CTE's (the join), so each has its before-image. An UPDATE ... FROM's tables are
    read by the CTE too (only the table updated is locked); a row the join gives twice is updated once, as ever."""
    old = f"{marker}_o"
    keys = ", ".join(f"{_q(ref)}.{_q(k)} AS {_q(f'{marker}_k{i}')}" for i, k in enumerate(table.key))
    template = (f"WITH {_q(old)} AS (SELECT {keys}, pg_catalog.to_jsonb({_q(ref)}.*) AS {_q(marker + '_j')} "
                f"FROM x FOR UPDATE OF {_q(ref)}) SELECT 1")
    cte: Any = parse_sql(template)[0].stmt.withClause.ctes[0]  # type: ignore[union-attr]
    cte.ctequery.fromClause = (node.relation, *(node.fromClause or ()))  # the WHERE may name the FROM's tables
    cte.ctequery.whereClause = node.whereClause
    if node.withClause is None:
        node.withClause = ast.WithClause(ctes=(cte,), recursive=False)
    else:
        node.withClause.ctes = (*node.withClause.ctes, cte)
    node.fromClause = (*(node.fromClause or ()), ast.RangeVar(relname=old, inh=True, relpersistence="p"))
    join = " AND ".join(f"{_q(ref)}.{_q(k)} = {_q(old)}.{_q(f'{marker}_k{i}')}" for i, k in enumerate(table.key))
    joined = parse_sql(f"SELECT 1 WHERE {join}")[0].stmt.whereClause  # type: ignore[union-attr]
    node.whereClause = joined if node.whereClause is None else \
        ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=(node.whereClause, joined))
    if node.returningClause is not None:  # `*` would now take in the CTE's columns too: the table's only
        for target in node.returningClause.exprs:
            if _star(target.val):
                target.val = ast.ColumnRef(fields=(ast.String(sval=ref), ast.A_Star()))
    return f"pg_catalog.jsonb_build_array({_q(old)}.{_q(marker + '_j')}, pg_catalog.to_jsonb({_q(ref)}.*))"


def failure(error_text: str, marker: str) -> str | None:
    """Which of FAILURES a server's error is, from the text its cast left in it (the marker: no statement the agent
    writes can forge it); None for any other error."""
    return next((what for what in FAILURES if _failure_text(what, marker) in error_text), None)


def _failure_text(what: str, marker: str) -> str:
    return f"goex-proxy capture {what} {marker}"


def _fail(what: str, marker: str, detail: str) -> str:
    """An expression that fails the statement with the failure's text in the server's error: a cast to int of text
    that is none. `detail` must not be a constant (a constant cast is folded, so failed, when the statement is
    planned, whether a row would reach it or not)."""
    return f"pg_catalog.to_jsonb(({_literal(_failure_text(what, marker) + ': ')} || {detail})::int)"


def _bounded(image: str, marker: str, bound: int) -> str:
    """The image, counted row by row in a setting local to the transaction and keyed by the statement's start (so
    that each statement, and each run of a prepared one, counts from one): past `bound`, a cast that fails, which
    fails the statement before it ends, so nothing it did stays."""
    name = f"'goex.{marker}'"
    now = "pg_catalog.statement_timestamp()::text"
    kept = f"pg_catalog.current_setting({name}, true)"
    count = (f"CASE WHEN pg_catalog.split_part({kept}, '|', 1) = {now} "
             f"THEN pg_catalog.split_part({kept}, '|', 2)::int + 1 ELSE 1 END")
    counted = f"pg_catalog.split_part(pg_catalog.set_config({name}, {now} || '|' || ({count})::text, true), '|', 2)::int"
    return f"CASE WHEN {counted} > {int(bound)} THEN {_fail('bound', marker, kept)} ELSE {image} END"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _star(value: Any) -> bool:
    """Whether an expression is an unqualified `*`."""
    fields: Any = value.fields if isinstance(value, ast.ColumnRef) else None
    return fields is not None and len(fields) == 1 and isinstance(fields[0], ast.A_Star)


def _current_of(where: Any) -> bool:
    return isinstance(where, ast.CurrentOfExpr)


def _q(name: str) -> str:
    """An identifier, always double-quoted (a table or alias named like a keyword or in capitals stays itself)."""
    return '"' + name.replace('"', '""') + '"'
