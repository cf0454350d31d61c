"""The card of a SQL statement that waits for a person: the database, the agent, the SQL and its parameters, each
scrubbed of secrets and cut short, and what undo could do for it, in the shape of an HTTP request's card."""

from __future__ import annotations

from typing import Any

from ..credentials.redact import SecretScrubber
from ..printable import shown
from .card import MOST_FIELDS, _short

#: How much of the SQL a card shows (a cut statement says its length).
MOST_SQL_CHARS = 600


def sql_card(database: str, url: str, agent: str, method: str, sql: str, params: list[Any] | None,
             undo_class: str, why: str, scrub: SecretScrubber) -> dict[str, Any]:
    """The card for one waiting statement (stored with it, sent in notifications, shown by `pending`)."""
    text = shown(" ".join(scrub.text(sql).split()))  # a statement's lines as one (the log keeps it as sent)
    text = text if len(text) <= MOST_SQL_CHARS else f"{text[:MOST_SQL_CHARS]}… ({len(text)} characters)"
    given = params or []
    fields = {f"${n}": _short(value, scrub) for n, value in enumerate(given[:MOST_FIELDS], 1)}
    if len(given) > MOST_FIELDS:
        fields["…"] = f"{len(given) - MOST_FIELDS} more"
    back = "Undo could not take it back (its rows are not captured)." if undo_class.startswith("irreversible") \
        else f"Undo class: {undo_class}."
    with_params = f" with {', '.join(f'{k}={v}' for k, v in fields.items())}" if fields else ""
    summary = (f"{method} on database '{database}' by agent '{agent}': {text}{with_params}. It waits because {why}. "
               f"{back}")
    return {"method": method, "runs_as": [], "url": url, "database": database, "agent": agent, "sql": text,
            "fields": fields, "undo_class": undo_class, "undo_rule": None,
            "undo": ["nothing: its rows are not captured"] if undo_class.startswith("irreversible") else [],
            "why": why, "summary": summary}
