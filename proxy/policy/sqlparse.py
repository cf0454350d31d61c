"""SQL read by PostgreSQL's own parser (pglast): each statement's kinds, tables, columns, WHERE and functions; no I/O."""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from typing import Any

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from pglast.visitors import Visitor

#: The kinds a rule's `statements:` may name.
KINDS = ("select", "insert", "update", "delete", "ddl", "copy", "transaction", "set", "other")

#: Transaction control that changes nothing by itself (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, ...).
_TRANSACTION = (ast.TransactionStmt,)
_SET = (ast.VariableSetStmt, ast.VariableShowStmt)
#: Statements that change the schema, roles or the server's objects rather than rows.
_DDL_NAMES = ("Create", "Alter", "Drop", "Rename", "Grant", "Comment", "Index", "Reindex", "Cluster", "Refresh",
              "Security", "SecLabel", "Define", "Composite", "Rule", "View", "Import", "Reassign", "Alter")

#: Functions whose result depends only on their arguments (or the clock or session), that read and write no table,
#: call no user code and reach nothing beyond the server: a statement calling only these is seen through.
SAFE_FUNCTIONS = frozenset({
    # aggregates
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "string_agg", "array_agg", "json_agg",
    "jsonb_agg", "json_object_agg", "jsonb_object_agg", "stddev", "variance",
    # numbers
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "mod", "power", "sqrt", "greatest", "least", "sign",
    # text
    "lower", "upper", "length", "char_length", "substr", "substring", "trim", "btrim", "ltrim", "rtrim", "replace",
    "concat", "concat_ws", "left", "right", "position", "strpos", "split_part", "initcap", "lpad", "rpad", "format",
    "to_char", "to_number", "to_date", "to_timestamp", "md5", "starts_with", "reverse", "repeat",
    # time
    "now", "current_date", "current_timestamp", "date_trunc", "date_part", "extract", "age", "make_date",
    "make_interval", "clock_timestamp", "statement_timestamp", "transaction_timestamp",
    # values and collections
    "coalesce", "nullif", "array_length", "cardinality", "unnest", "json_build_object", "jsonb_build_object",
    "json_build_array", "jsonb_build_array", "to_json", "to_jsonb", "row_number", "rank", "dense_rank", "lag", "lead",
    "first_value", "last_value", "generate_series", "version", "current_schema", "current_database",
})


class SqlError(ValueError):
    """SQL that PostgreSQL's parser does not accept."""


@dataclass(frozen=True)
class Statement:
    """One parsed statement: what it does (every kind it performs, a data-modifying CTE included), on what."""

    text: str
    kind: str                       # the statement's own kind (the top of its tree)
    kinds: frozenset[str]           # every kind it performs: a SELECT with a DELETE in a CTE has both
    tables: tuple[str, ...]         # as written, schema-qualified when it is (`public.orders`)
    columns: tuple[str, ...]        # the columns it names (`*` for a star)
    where: bool                     # every UPDATE and DELETE in it has a WHERE (True when it has none)
    functions: tuple[str, ...]      # every function it calls, as written (`pg_catalog.lower` keeps its schema)
    setting: str | None = None      # SET/SHOW: the setting's name
    copy_program: bool = False      # COPY to or from a server file or program
    #: Server-side names it makes or drops, which the extended protocol's Bind and Execute name too:
    #: `statement:NAME` (PREPARE, DEALLOCATE), `portal:NAME` (DECLARE, CLOSE), NAME `*` for all of them.
    names: tuple[str, ...] = ()
    #: It acts on more than the tables it names: CASCADE (to whatever depends on them), DDL naming no table (DROP
    #: SCHEMA, DROP OWNED, GRANT ON ALL TABLES IN SCHEMA, CREATE FUNCTION), VACUUM or CLUSTER of every table.
    opaque: bool = False

    def as_cel(self) -> dict[str, Any]:
        """What a rule's `when` reads as `statement`."""
        return {"text": self.text, "kind": self.kind, "kinds": sorted(self.kinds), "tables": list(self.tables),
                "columns": list(self.columns), "where": self.where, "functions": list(self.functions),
                "setting": self.setting or "", "copy_program": self.copy_program, "opaque": self.opaque}

    def unseen_functions(self, allowed: frozenset[str] = frozenset()) -> list[str]:
        """The functions it calls that the policy cannot see through: neither built-in safe ones nor named by a rule."""
        return [f for f in self.functions if f not in allowed and _builtin(f) not in SAFE_FUNCTIONS]


def _builtin(name: str) -> str:
    """A function's name as the safe list has it: unqualified or in pg_catalog (any other schema is user code)."""
    schema, _, bare = name.rpartition(".")  # as the parser folds it: a quoted "Lower" is not lower()
    return bare if schema in ("", "pg_catalog") else name


def _kind_of(node: Any) -> str:
    if isinstance(node, (ast.SelectStmt, ast.VariableShowStmt)) and not getattr(node, "intoClause", None):
        return "select"   # SHOW reads a setting, as SELECT reads rows (SQLAlchemy asks a few when it connects)
    if isinstance(node, ast.SelectStmt):  # SELECT ... INTO makes a table
        return "ddl"
    if isinstance(node, ast.InsertStmt):
        return "insert"
    if isinstance(node, ast.UpdateStmt):
        return "update"
    if isinstance(node, (ast.DeleteStmt, ast.TruncateStmt)):
        return "delete"
    if isinstance(node, ast.MergeStmt):
        return "update"
    if isinstance(node, ast.CopyStmt):
        return "copy"
    if isinstance(node, _TRANSACTION):  # two-phase commit acts beyond the session: another transaction, kept locks
        return "other" if node.kind in _TWO_PHASE else "transaction"
    if isinstance(node, _SET):
        return "set"
    name = type(node).__name__
    if any(name.startswith(prefix) for prefix in _DDL_NAMES) or "Create" in name:
        return "ddl"
    return "other"


_TWO_PHASE = frozenset({enums.TransactionStmtKind.TRANS_STMT_PREPARE, enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
                        enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED})
_MERGE_KINDS = {enums.CmdType.CMD_UPDATE: "update", enums.CmdType.CMD_DELETE: "delete",
                enums.CmdType.CMD_INSERT: "insert"}
#: The name a DO block's code is listed under in `functions` (code the policy cannot see through, like a function's).
DO_BLOCK = "DO"
LOAD_LIBRARY = "LOAD"

#: The operators PostgreSQL 15 defines in pg_catalog (`SELECT DISTINCT oprname FROM pg_operator ...`); another name
#: unqualified is someone's operator found in the search_path.
BUILTIN_OPERATORS = frozenset(
    "!! !~ !~* !~~ !~~* # ## #- #> #>> % & && &< &<| &> * *< *<= *<> *= *> *>= + - -> ->> -|- / < <-> << <<= <<| <= "
    "<> <@ <^ = > >= >> >>= >^ ? ?# ?& ?- ?-| ?| ?|| @ @-@ @> @? @@ @@@ ^ ^@ | |&> |/ |>> || ||/ ~ ~* ~<=~ ~<~ ~= "
    "~>=~ ~>~ ~~ ~~*".split())
_OPERATOR_KINDS = (enums.A_Expr_Kind.AEXPR_OP, enums.A_Expr_Kind.AEXPR_OP_ANY, enums.A_Expr_Kind.AEXPR_OP_ALL)

_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.TruncateStmt, ast.MergeStmt, ast.CopyStmt)


class _Walk(Visitor):
    """Collects what a statement's tree names and does (reads are its tables; the kinds kept are the writes)."""

    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.columns: list[str] = []
        self.functions: list[str] = []
        self.where = True
        self.cascade = False

    def visit(self, ancestors: Any, node: Any) -> None:
        if getattr(node, "behavior", None) == enums.DropBehavior.DROP_CASCADE:
            self.cascade = True
        if isinstance(node, _WRITES) or isinstance(node, ast.SelectStmt) and node.intoClause is not None:
            self.kinds.add(_kind_of(node))
        if isinstance(node, (ast.UpdateStmt, ast.DeleteStmt)) and node.whereClause is None \
                or isinstance(node, ast.TruncateStmt):
            self.where = False
        if isinstance(node, ast.MergeStmt):  # each WHEN clause is an insert, update or delete; the ON is no WHERE
            actions = {_MERGE_KINDS[c.commandType] for c in node.mergeWhenClauses or () if c.commandType in _MERGE_KINDS}
            self.kinds |= actions
            if actions & {"update", "delete"}:
                self.where = False
        elif isinstance(node, ast.OnConflictClause) and node.action == enums.OnConflictAction.ONCONFLICT_UPDATE:
            self.kinds.add("update")  # INSERT ... ON CONFLICT DO UPDATE updates the rows that are there
        elif isinstance(node, ast.LockingClause):
            self.kinds.add("update")  # SELECT ... FOR UPDATE/SHARE locks rows: PostgreSQL asks UPDATE privilege too
        elif isinstance(node, ast.DoStmt):
            self.functions.append(DO_BLOCK)
        elif isinstance(node, ast.LoadStmt):  # LOAD 'library': a shared library's code, run in the server
            self.functions.append(LOAD_LIBRARY)
        elif isinstance(node, ast.A_Expr) and node.kind in _OPERATOR_KINDS:
            # An operator runs its function unseen: one of another schema than pg_catalog (OPERATOR(public.#=#)), or
            # unqualified and not a built-in one (found in the search_path), is listed as a function is
            name = ".".join(str(getattr(part, "sval", "?")) for part in node.name or ())
            if not (name.startswith("pg_catalog.") or name in BUILTIN_OPERATORS):
                self.functions.append(name)
        elif isinstance(node, ast.A_Indirection):
            # `(x).name` is a field of x, or the function name(x) ("('seq'::regclass).nextval" calls nextval): which
            # one only the server knows, so each name is read as a function the policy must see through.
            self.functions.extend(str(part.sval) for part in node.indirection or () if isinstance(part, ast.String))
        if isinstance(node, ast.FuncCall):
            self.functions.append(".".join(part.sval for part in node.funcname or ()))
        elif isinstance(node, ast.ColumnRef):
            last = node.fields[-1] if node.fields else None
            self.columns.append("*" if isinstance(last, ast.A_Star) else str(getattr(last, "sval", "?")))
        elif isinstance(node, ast.ResTarget) and node.name and _names_written_column(ancestors):
            self.columns.append(node.name)


def _names_written_column(ancestors: Any) -> bool:
    """Whether a ResTarget is in an INSERT's column list or an UPDATE's SET (not a SELECT's output names)."""
    holder = getattr(ancestors, "parent", None)  # the tuple holding the target, then the statement holding the tuple
    statement, member = getattr(holder, "node", None), getattr(holder, "member", None)
    return isinstance(statement, ast.InsertStmt) and member == "cols" or \
        isinstance(statement, (ast.UpdateStmt, ast.OnConflictClause, ast.MergeWhenClause)) and member == "targetList"


def _tables(node: Any) -> tuple[str, ...]:
    """Every relation the statement names, CTE names left out, in order of first mention."""
    from pglast.visitors import referenced_relations

    return tuple(dict.fromkeys(sorted(referenced_relations(node))))


def _names(node: Any) -> tuple[str, ...]:
    if isinstance(node, ast.PrepareStmt):
        return (f"statement:{node.name}",)
    if isinstance(node, ast.DeallocateStmt):
        return ("statement:*",) if node.isall or node.name is None else (f"statement:{node.name}",)
    if isinstance(node, ast.DiscardStmt) and node.target == enums.DiscardMode.DISCARD_ALL:
        return ("statement:*", "portal:*")
    if isinstance(node, ast.DeclareCursorStmt):
        return (f"portal:{node.portalname}",)
    if isinstance(node, ast.ClosePortalStmt):
        return (f"portal:{node.portalname}" if node.portalname is not None else "portal:*",)
    return ()


def _statement(text: str, node: Any) -> Statement:
    top: Any = node.query if isinstance(node, ast.ExplainStmt) else node  # EXPLAIN ANALYZE runs it: read as what it explains
    if isinstance(top, ast.PrepareStmt):  # PREPARE ... AS: the statement it prepares
        top = top.query
    walk = _Walk()
    if top is not None:
        walk(top)
    kind = _kind_of(top)
    kinds = {kind, *walk.kinds}
    if isinstance(top, ast.CopyStmt) and top.is_from:  # COPY ... FROM writes rows: an insert as well
        kinds.add("insert")
    setting = top.name if isinstance(top, _SET) else None
    copy_program = isinstance(top, ast.CopyStmt) and (bool(top.filename) or bool(top.is_program))
    tables = _tables(top)
    opaque = walk.cascade or not tables and (kind == "ddl" or isinstance(top, ast.VacuumStmt))
    return Statement(text, kind, frozenset(kinds), tables, tuple(dict.fromkeys(walk.columns)), walk.where,
                     tuple(dict.fromkeys(walk.functions)), setting, copy_program, _names(node), opaque)


#: Text longer than this is parsed again each time rather than kept in the cache (2048 texts of up to a message's
#: 64 MiB each would be the gateway's memory).
CACHED_CHARS = 16 * 1024
#: Text longer than this has its tree's depth measured before pglast builds it: pglast builds Python nodes
#: recursively, and a tree some 50,000 deep (`SELECT 1+1+...+1`, 2 bytes a level) overflows the C stack and kills
#: the process (the gateway, and `run`'s proxy with it). Up to this length a tree is at most ~4,000 deep, which
#: pglast builds.
DEPTH_CHECKED_CHARS = 8 * 1024
#: The deepest tree (in its JSON's nesting) a longer text may have; statements people and ORMs write nest far less.
MAX_DEPTH = 2000
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"{": 1, "[": 1, "}": -1, "]": -1}


def parse(sql: str) -> tuple[Statement, ...]:
    """Every statement in `sql`, in order; SqlError with the parser's message when it does not parse. Cached by the
    text: clients send the same statements again and again, and the parser's tree costs about 250 µs to build."""
    return _cached(sql) if len(sql) <= CACHED_CHARS else _parse(sql)


@functools.lru_cache(maxsize=2048)
def _cached(sql: str) -> tuple[Statement, ...]:
    return _parse(sql)


def _check_depth(sql: str) -> None:
    """SqlError if the tree of a long text is deeper than MAX_DEPTH (measured on libpg_query's JSON, built in C,
    without recursion in Python)."""
    from pglast.parser import parse_sql_json

    tree = _NOT_BRACKET.sub("", _JSON_STRING.sub("", parse_sql_json(sql)))
    depth = max(itertools.accumulate(map(_STEP.__getitem__, tree)), default=0)
    if depth > MAX_DEPTH:
        raise SqlError(f"the statement nests {depth} deep (goex-proxy reads statements up to {MAX_DEPTH} deep)")


def _parse(sql: str) -> tuple[Statement, ...]:
    try:
        if len(sql) > DEPTH_CHECKED_CHARS:
            _check_depth(sql)
        raw = parse_sql(sql)
    except ParseError as exc:
        raise SqlError(f"the statement does not parse: {exc.args[0]}") from None
    except Exception as exc:  # noqa: BLE001 - the parser's other failures (too deep a tree, bad encoding) refuse it too
        raise SqlError(f"the statement does not parse: {exc}") from None
    encoded = sql.encode("utf-8")
    out = []
    for item in raw:
        start = item.stmt_location or 0
        end = start + item.stmt_len if item.stmt_len else len(encoded)
        out.append(_statement(encoded[start:end].decode("utf-8", "replace").strip(), item.stmt))
    return tuple(out)
