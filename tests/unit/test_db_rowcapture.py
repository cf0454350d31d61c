"""A session's row capture without a server (db.rowcapture): the image column taken out of the server's messages,
a Bind's result formats, and when held images count (the agent's transactions followed by what the server says)."""

from __future__ import annotations

import json
import struct

from goex_proxy.credentials.redact import SecretScrubber
from goex_proxy.db.capture import Capture, Table
from goex_proxy.db.rowcapture import Images, Transactions, is_captured, outcome, result_formats, strip_description, strip_row, take

M = "goex_0123456789ab"
CAPTURE = Capture("DELETE ...", "delete", Table("public", "orders", ("id",)), M, False)


def description(*names: str) -> bytes:
    return struct.pack("!H", len(names)) + b"".join(n.encode() + b"\0" + bytes(18) for n in names)


def data_row(*values: bytes | None) -> bytes:
    return struct.pack("!H", len(values)) + b"".join(
        struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v for v in values)


def test_the_image_column_is_taken_out_of_descriptions_and_rows() -> None:
    assert is_captured(description("id", M), M) and not is_captured(description("id", "qty"), M)
    assert not is_captured(description(), M)
    assert strip_description(description("id", "item", M)) == description("id", "item")
    assert strip_description(description(M)) is None  # the agent's statement had no RETURNING
    assert strip_row(data_row(b"1", None, b'{"id": 1}')) == (data_row(b"1", None), b'{"id": 1}')
    images = Images(CAPTURE, binary=True)
    take(images, b'\x01{"id": 1}')  # jsonb in binary: a version byte, then the text
    take(images, None)
    assert images.rows == [{"id": 1}]


def bind(formats: tuple[int, ...]) -> bytes:
    return (b"p\0s\0" + struct.pack("!HH", 1, 0) + struct.pack("!H", 1) + struct.pack("!i", 2) + b"42"
            + struct.pack(f"!H{len(formats)}H", len(formats), *formats))


def test_a_bind_with_formats_per_column_gets_one_more_for_the_image() -> None:
    assert result_formats(bind((1, 0))) == (bind((1, 0, 0)), False)
    assert result_formats(bind((1,))) == (bind((1,)), True)  # one for all: the image comes in binary too
    assert result_formats(bind(())) == (bind(()), False)


def test_held_images_count_once_the_transaction_commits() -> None:
    auto: Transactions[str] = Transactions()
    auto.hold("a")
    assert auto.ready(b"I") == [("a", None)]  # autocommit, or an implicit transaction that ended well
    failed: Transactions[str] = Transactions()
    failed.hold("a")
    failed.error()  # a later message of the batch failed: the implicit transaction rolled back
    assert failed.ready(b"I") == [("a", "its transaction did not commit")]
    block: Transactions[str] = Transactions()
    block.hold("a")
    assert block.ready(b"T") == []
    block.hold("b")
    assert block.ready(b"T") == []
    block.tag("COMMIT")
    assert block.ready(b"I") == [("a", None), ("b", None)]
    rolled: Transactions[str] = Transactions()
    rolled.hold("a")
    assert rolled.ready(b"T") == []
    rolled.tag("ROLLBACK")  # to a savepoint: the block goes on, which rows stayed is not known
    assert rolled.ready(b"T") == [("a", "its transaction was rolled back (wholly, or to a savepoint after it)")]
    prepared: Transactions[str] = Transactions()
    prepared.hold("a")
    prepared.ready(b"T")
    prepared.tag("PREPARE TRANSACTION")
    assert "two-phase" in str(prepared.ready(b"I")[0][1])
    cut: Transactions[str] = Transactions()
    cut.hold("a")
    cut.ready(b"T")
    assert cut.drain("the connection ended") == [("a", "the connection ended")] and cut.held == []



def test_a_transactions_end_settles_only_the_statements_before_it() -> None:
    rolled = "its transaction was rolled back (wholly, or to a savepoint after it)"
    both: Transactions[str] = Transactions()
    both.hold("a")
    assert both.ready(b"T") == []
    both.tag("ROLLBACK")
    both.tag("COMMIT")  # `ROLLBACK; COMMIT`: the COMMIT, outside any transaction, commits nothing
    assert both.ready(b"I") == [("a", rolled)]
    pipeline: Transactions[str] = Transactions()
    pipeline.hold("a")
    pipeline.tag("COMMIT")
    pipeline.hold("b")  # after a BEGIN further on in the same pipeline
    assert pipeline.ready(b"T") == [("a", None)] and pipeline.held == ["b"]
    pipeline.tag("ROLLBACK")
    assert pipeline.ready(b"I") == [("b", rolled)]

def test_images_holding_a_known_secret_are_not_written() -> None:
    scrub = SecretScrubber({"Db-Password-9x7": "[database password]"})
    kept = Images(CAPTURE, rows=[{"id": 1, "item": "apples"}])
    fields = outcome(kept, None, scrub)
    assert fields["undo_class"] == "exact" and json.loads(fields["row_images"])["rows"] == kept.rows
    secret = Images(CAPTURE, rows=[{"id": 1, "item": "Db-Password-9x7"}])
    assert outcome(secret, None, scrub) == {"undo_class": "irreversible: its rows hold a secret goex-proxy knows, "
                                                          "which is never written down"}
    assert outcome(Images(CAPTURE), None, scrub) == {"undo_class": None}  # it changed no rows
    elsewhere = Images(CAPTURE)
    take(elsewhere, b"null")  # a row without its image (the plan fails the statement instead): not undone
    assert outcome(elsewhere, None, scrub)["undo_class"] == "irreversible: a row came back without its image"
    other = Images(CAPTURE)
    take(other, b"plums")  # a column that is no image (another portal's rows): kept as none, never a crash
    assert outcome(other, None, scrub)["undo_class"] == "irreversible: a row came back without its image"
