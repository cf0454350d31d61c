"""The gateway's pure parts: protocol messages read and built, and the audit fields of a statement's outcome."""

from __future__ import annotations

import struct

from goex_proxy.db import record, wire


def test_a_bind_message_is_read_with_its_parameters_and_formats() -> None:
    params = [b"42", None, struct.pack("!i", 7)]
    payload = b"portal\0stmt\0" + struct.pack("!HHHH", 3, 0, 0, 1) + struct.pack("!H", 3)
    for value in params:
        payload += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    payload += struct.pack("!H", 0)
    bound = wire.bind_message(payload)
    assert (bound.portal, bound.statement, bound.params, bound.formats) == ("portal", "stmt", tuple(params), (0, 0, 1))
    one_format = b"\0\0" + struct.pack("!HH", 1, 1) + struct.pack("!H", 1) + struct.pack("!i", 2) + b"\0\x05" + b"\0\0"
    assert wire.bind_message(one_format).formats == (1,)   # one format code applies to every parameter


def test_parse_and_error_messages() -> None:
    parsed = wire.parse_message(b"s1\0SELECT $1\0" + struct.pack("!HI", 1, 23))
    assert (parsed.statement, parsed.sql, parsed.types) == ("s1", "SELECT $1", (23,))
    error = wire.error_response("42501", "refused: no", hint="ask")
    assert error[:1] == b"E" and struct.unpack("!I", error[1:5])[0] == len(error) - 1
    assert wire.error_fields(error[5:]) == {"S": "ERROR", "V": "ERROR", "C": "42501", "M": "refused: no", "H": "ask"}
    assert wire.parse_params(b"user\0bot\0database\0shop\0\0") == {"user": "bot", "database": "shop"}


def test_parameters_are_recorded_as_values() -> None:
    assert record.param_value(b"abc", binary=False) == "abc"
    assert record.param_value(None, binary=True) is None
    assert record.param_value(struct.pack("!q", -5), binary=True, oid=20) == -5
    assert record.param_value(b"\x01", binary=True, oid=16) is True
    assert record.param_value(b"\x01{\"a\": 1}", binary=True, oid=3802) == '{"a": 1}'   # jsonb: a version byte
    assert record.param_value(b"\x00\xff", binary=True, oid=17) == {"binary": "00ff", "type": 17}


def test_rows_and_methods() -> None:
    assert record.rows_of(["UPDATE 3", "INSERT 0 2", "BEGIN"]) == 5
    assert record.rows_of(["BEGIN", "SET"]) is None
    from goex_proxy.policy.sqlparse import parse

    assert record.method_of(parse("SELECT 1; DELETE FROM t WHERE a = 1; SELECT 2")) == "SELECT+DELETE"
    assert record.undo_class(parse("SELECT 1")) is None
    assert record.undo_class(parse("BEGIN")) is None
    assert record.undo_class(parse("UPDATE t SET a = 1 WHERE b = 2")).startswith("irreversible")
    assert record.undo_class(parse("COPY t TO STDOUT")) is None
