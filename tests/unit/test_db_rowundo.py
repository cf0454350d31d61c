"""The undo of a captured SQL statement planned without a server (db.rowundo): refused for a row edited since it was
chained, the statements that check and restore the rows, and the conflicts read from the check's answer."""

from __future__ import annotations

import json

import pytest

from goex_proxy.audit import store as audit
from goex_proxy.db import rowundo
from goex_proxy.errors import GoexError, NotFound

KEY = b"k" * 32


def row_with(images: dict | None, undo_class: str | None = "exact", **more) -> dict:
    """An audit row of a statement, chained under KEY as the writer would."""
    row = {f: None for f in audit.REQUEST_FIELDS + audit.OUTCOME_FIELDS}
    row |= {"id": "1M9ABC", "ts": 1.0, "agent": "bot", "method": "UPDATE", "scheme": "postgresql", "host": "shop",
            "decision": "allow", "status": 0, "undo_class": undo_class, "prev_hash": "",
            "row_images": None if images is None else json.dumps(images).encode(), **more}
    row["hash"] = audit.row_hash(KEY, "", row)
    row["outcome_hash"] = audit.outcome_hash(KEY, row["hash"], row)
    return row


UPDATE = {"kind": "update", "schema": "public", "table": "orders", "key": ["id"],
          "rows": [[{"id": 1, "qty": 3, "item": "a"}, {"id": 1, "qty": 30, "item": "a"}],
                   [{"id": 2, "qty": 1, "item": "b"}, {"id": 2, "qty": 10, "item": "b"}]]}


def test_an_update_is_set_back_by_key_the_columns_it_changed_only() -> None:
    plan = rowundo.plan_row(row_with(UPDATE), KEY)
    assert plan.describe() == ['lock 2 row(s) of "public"."orders" by (id) and check each is as the statement left it',
                               "set back 2 row(s): (1), (2)"]
    assert plan.statements == ['UPDATE "public"."orders" AS t SET "qty" = r."qty" FROM pg_catalog.jsonb_array_elements('
                               + "'" + json.dumps([b for b, _ in UPDATE["rows"]]) + "'::jsonb) AS x(img) CROSS JOIN "
                               'LATERAL pg_catalog.jsonb_populate_record(NULL::"public"."orders", x.img) AS r '
                               'WHERE t."id" = r."id"']
    assert "FOR UPDATE OF t" in rowundo.check_statement(plan) and '"qty": 30' in rowundo.check_statement(plan)


def test_deleted_rows_are_inserted_back_and_inserted_ones_deleted() -> None:
    deleted = rowundo.plan_row(row_with({**UPDATE, "kind": "delete", "rows": [{"id": 5, "item": "it's"}]}), KEY)
    assert deleted.statements[0].startswith('INSERT INTO "public"."orders" OVERRIDING SYSTEM VALUE SELECT r.* FROM')
    assert """'[{"id": 5, "item": "it''s"}]'::jsonb""" in deleted.statements[0]  # quoted as a literal
    inserted = rowundo.plan_row(row_with({**UPDATE, "kind": "insert", "rows": [{"id": 6}]}), KEY)
    assert inserted.statements[0].startswith('DELETE FROM "public"."orders" AS t USING')


def test_conflicts_name_the_key_and_what_changed() -> None:
    plan = rowundo.plan_row(row_with(UPDATE), KEY)
    assert rowundo.conflicts(plan, [["1", '{"id": 1, "qty": 30, "item": "a"}', "t"],
                                    ["2", '{"id": 2, "qty": 10, "item": "b"}', "t"]]) == []
    assert rowundo.conflicts(plan, [["1", '{"id": 1, "qty": 31, "item": "a"}', "f"]]) == [
        "the row with key (1) changed since: qty 30 -> 31", "the row with key (2) is gone"]
    deleted = rowundo.plan_row(row_with({**UPDATE, "kind": "delete", "rows": [{"id": 5}]}), KEY)
    assert rowundo.conflicts(deleted, [["1", '{"id": 5}', "t"]]) == ['a row with key (5) exists again: {"id": 5}']


def test_an_edited_row_or_one_without_images_is_not_undone() -> None:
    edited = row_with(UPDATE)
    edited["row_images"] = json.dumps({**UPDATE, "table": "payroll"}).encode()
    with pytest.raises(GoexError, match="does not match its hash"):
        rowundo.plan_row(edited, KEY)
    with pytest.raises(GoexError, match="cannot undo 1M9ABC: irreversible: no primary key"):
        rowundo.plan_row(row_with(None, "irreversible: no primary key"), KEY)
    with pytest.raises(NotFound, match="it changed no rows"):
        rowundo.plan_row(row_with(None, None), KEY)
    with pytest.raises(GoexError, match="itself the undo of 1M9XYZ"):
        rowundo.plan_row(row_with(UPDATE, undo_of="1M9XYZ"), KEY)
