"""Transaction control inside a held transaction: what the agent's BEGIN, COMMIT and ROLLBACK become, by its status,
and what is refused."""

from __future__ import annotations

import pytest

from goex_proxy.db import holdsql

MINE = "goex_a_1"


def translated(sql: str, state: bytes) -> holdsql.Translation | holdsql.Refusal | None:
    found = holdsql.transaction_nodes(sql)
    assert found is not None and len(found[1]) == 1
    return holdsql.translate(found[1][0], state, MINE)


@pytest.mark.parametrize(("sql", "state", "sent", "tag", "after"), [
    ("BEGIN", b"I", "SAVEPOINT goex_a_1", "BEGIN", b"T"),
    ("start transaction", b"I", "SAVEPOINT goex_a_1", "BEGIN", b"T"),
    ("BEGIN", b"T", "", "BEGIN", b"T"),                    # PostgreSQL warns and carries on
    ("BEGIN", b"E", "SAVEPOINT goex_a_1", "BEGIN", b"T"),  # fails as BEGIN would in an aborted transaction
    ("COMMIT", b"T", "RELEASE SAVEPOINT goex_a_1", "COMMIT", b"I"),
    ("END", b"T", "RELEASE SAVEPOINT goex_a_1", "COMMIT", b"I"),
    ("COMMIT", b"E", "ROLLBACK TO SAVEPOINT goex_a_1; RELEASE SAVEPOINT goex_a_1", "ROLLBACK", b"I"),
    ("COMMIT AND CHAIN", b"T", "RELEASE SAVEPOINT goex_a_1; SAVEPOINT goex_a_1", "COMMIT", b"T"),
    ("COMMIT", b"I", "", "COMMIT", b"I"),                  # no transaction in progress: nothing to do
    ("ROLLBACK", b"T", "ROLLBACK TO SAVEPOINT goex_a_1; RELEASE SAVEPOINT goex_a_1", "ROLLBACK", b"I"),
    ("ABORT", b"E", "ROLLBACK TO SAVEPOINT goex_a_1; RELEASE SAVEPOINT goex_a_1", "ROLLBACK", b"I"),
    ("ROLLBACK AND CHAIN", b"T", "ROLLBACK TO SAVEPOINT goex_a_1; RELEASE SAVEPOINT goex_a_1; SAVEPOINT goex_a_1",
     "ROLLBACK", b"T"),
    ("ROLLBACK", b"I", "", "ROLLBACK", b"I"),
])
def test_transaction_control_becomes_savepoints(sql: str, state: bytes, sent: str, tag: str, after: bytes) -> None:
    assert translated(sql, state) == holdsql.Translation(sent, tag, after)


def test_no_statement_of_the_agent_ends_the_held_transaction() -> None:
    for state in (b"I", b"T", b"E"):
        for sql in ("COMMIT", "END", "COMMIT AND CHAIN", "ROLLBACK", "ABORT", "ROLLBACK AND CHAIN"):
            done = translated(sql, state)
            assert isinstance(done, holdsql.Translation)
            assert not any(word in done.sql.upper().split() for word in ("COMMIT", "END", "ABORT")), (sql, state)
            assert "ROLLBACK TO SAVEPOINT" in done.sql or "ROLLBACK" not in done.sql


@pytest.mark.parametrize(("sql", "why"), [
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", holdsql.MODES),
    ("START TRANSACTION READ ONLY", holdsql.MODES),
    ("RELEASE SAVEPOINT goex_a_1", holdsql.RESERVED),
    ('ROLLBACK TO SAVEPOINT "GOEX_s_1"', holdsql.RESERVED),
    ("PREPARE TRANSACTION 'x'", holdsql.TWO_PHASE),
    ("COMMIT PREPARED 'x'", holdsql.TWO_PHASE),
])
def test_refused(sql: str, why: str) -> None:
    assert translated(sql, b"T") == holdsql.Refusal(why)


def test_the_agents_own_savepoints_go_as_they_are_and_messages_are_counted() -> None:
    assert translated("SAVEPOINT mine", b"T") is None
    assert translated("ROLLBACK TO mine", b"E") is None
    assert holdsql.transaction_nodes("SELECT 1; COMMIT") is not None
    count, nodes = holdsql.transaction_nodes("SELECT 1; COMMIT")  # type: ignore[misc]
    assert (count, len(nodes)) == (2, 1)
    assert holdsql.transaction_nodes("SELEC 1") is None
    assert holdsql.transaction_nodes("SELECT 1") == (1, [])
