"""Transaction control inside a held transaction (`transaction: hold`), pure: the agent's BEGIN, COMMIT and ROLLBACK
become savepoints of the transaction the gateway holds, with the command tag and transaction status the agent would
have seen without it."""

from __future__ import annotations

from dataclasses import dataclass

import pglast
from pglast import enums

_K = enums.TransactionStmtKind
#: Why a message mixing transaction control with other statements is refused: PostgreSQL gives such a string
#: implicit-transaction rules that the gateway would have to re-enact statement by statement.
MIXED = ("in a held transaction (transaction: hold) goex-proxy runs BEGIN, COMMIT, ROLLBACK and savepoints only as a "
         "message of their own: send them separately from other statements")
#: Why transaction control is refused in the extended protocol (a prepared COMMIT could run at any later Execute).
EXTENDED = ("in a held transaction (transaction: hold) goex-proxy takes BEGIN, COMMIT, ROLLBACK and savepoints only "
            "through the simple query protocol (psycopg, psql and libpq send them that way)")
MODES = ("in a held transaction (transaction: hold) a transaction's own modes (isolation level, read only, deferrable) "
         "cannot be set: the agent's BEGIN is a savepoint of the transaction goex-proxy holds; send a plain BEGIN")
RESERVED = "savepoint names starting with goex are goex-proxy's own in a held transaction"
TWO_PHASE = "two-phase commit cannot be used in a held transaction (transaction: hold)"


@dataclass(frozen=True)
class Translation:
    """What the gateway sends in place of the agent's statement, the tag the agent is sent for it, and the agent's
    transaction status after it if it succeeds ('I' outside its own transaction, 'T' inside)."""

    sql: str
    tag: str
    after: bytes


@dataclass(frozen=True)
class Refusal:
    reason: str


def transaction_nodes(sql: str) -> tuple[int, list[object]] | None:
    """How many statements a message has and its transaction control statements; None when it does not parse (the
    gateway's policy parse refuses it)."""
    try:
        raw = pglast.parse_sql(sql)
    except Exception:  # noqa: BLE001 - pglast raises its own ParseError and others for odd input
        return None
    nodes: list[object] = [r.stmt for r in raw if type(r.stmt).__name__ == "TransactionStmt"]
    return len(raw), nodes


def translate(node: object, state: bytes, mine: str) -> Translation | Refusal | None:
    """The agent's transaction statement `node` in its status `state` (b'I', b'T', b'E'), with `mine` the savepoint
    that stands for its own transaction; None: a savepoint statement of its own, sent as it is."""
    kind = getattr(node, "kind", None)
    chain = bool(getattr(node, "chain", False))
    inside = state in (b"T", b"E")
    if kind in (_K.TRANS_STMT_BEGIN, _K.TRANS_STMT_START):
        if getattr(node, "options", None):
            return Refusal(MODES)
        if state == b"I":
            return Translation(f"SAVEPOINT {mine}", "BEGIN", b"T")
        # Inside: PostgreSQL warns and carries on (or, aborted, fails it); a savepoint statement fails alike there.
        return Translation("" if state == b"T" else f"SAVEPOINT {mine}", "BEGIN", b"T")
    if kind == _K.TRANS_STMT_COMMIT:
        if not inside:
            return Translation("", "COMMIT", b"I")  # PostgreSQL warns: no transaction in progress
        again = f"; SAVEPOINT {mine}" if chain else ""
        if state == b"E":  # COMMIT of a failed transaction rolls it back, and says so
            return Translation(f"ROLLBACK TO SAVEPOINT {mine}; RELEASE SAVEPOINT {mine}{again}", "ROLLBACK",
                               b"T" if chain else b"I")
        return Translation(f"RELEASE SAVEPOINT {mine}{again}", "COMMIT", b"T" if chain else b"I")
    if kind == _K.TRANS_STMT_ROLLBACK:
        if not inside:
            return Translation("", "ROLLBACK", b"I")
        again = f"; SAVEPOINT {mine}" if chain else ""
        return Translation(f"ROLLBACK TO SAVEPOINT {mine}; RELEASE SAVEPOINT {mine}{again}", "ROLLBACK",
                           b"T" if chain else b"I")
    if kind in (_K.TRANS_STMT_SAVEPOINT, _K.TRANS_STMT_RELEASE, _K.TRANS_STMT_ROLLBACK_TO):
        if str(getattr(node, "savepoint_name", "") or "").lower().startswith("goex"):
            return Refusal(RESERVED)
        return None
    return Refusal(TWO_PHASE)
