"""The card of a SQL statement that waits for a person: database, agent, SQL and parameters, scrubbed and cut short."""

from __future__ import annotations

from goex_proxy.approvals.sqlcard import MOST_SQL_CHARS, sql_card
from goex_proxy.credentials.redact import SecretScrubber

SCRUB = SecretScrubber({"Db-Secret-Pw-123": "[database password]"})


def test_a_card_names_the_database_agent_sql_and_parameters_scrubbed() -> None:
    card = sql_card("shop", "postgresql://shop/shop", "mailbot", "DELETE",
                    "DELETE FROM users\n  WHERE pw = 'Db-Secret-Pw-123' OR id = $1\n", [7, "Db-Secret-Pw-123"],
                    "irreversible", "rule 'shop/deletes' says hold up to 10m", SCRUB)
    assert card["sql"] == "DELETE FROM users WHERE pw = '[database password]' OR id = $1"  # its lines as one
    assert card["fields"] == {"$1": "7", "$2": "[database password]"}
    assert card["summary"].startswith("DELETE on database 'shop' by agent 'mailbot': DELETE FROM users")
    assert "It waits because rule 'shop/deletes' says hold up to 10m. Undo could not take it back" in card["summary"]
    assert "Db-Secret" not in str(card)


def test_long_sql_and_many_parameters_are_cut() -> None:
    card = sql_card("shop", "postgresql://shop/shop", "bot", "INSERT", "INSERT INTO t VALUES " + "($1), " * 500,
                    list(range(30)), "irreversible", "why", SCRUB)
    assert len(card["sql"]) < MOST_SQL_CHARS + 40 and card["sql"].endswith("characters)")
    assert len(card["fields"]) == 21 and card["fields"]["…"] == "10 more"
