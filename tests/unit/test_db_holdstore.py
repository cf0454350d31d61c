"""The held transactions table: a person's request is taken once, only for an open hold of a live gateway, and a
hold is settled once, whoever decides first."""

from __future__ import annotations

from pathlib import Path

import pytest

from goex_proxy import ids
from goex_proxy.audit import store as audit
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.db import holdstore


def test_a_request_is_taken_once_and_a_hold_settled_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    writer = AuditWriter(path, Seal(tmp_path))  # holds this process's id tag, as a gateway does
    try:
        conn = audit.open_db(path, seal=Seal(tmp_path))
        live = ids.RequestIds().new()
        with conn:
            holdstore.insert(conn, live, "shop", "mailbot", 1.0)
        assert holdstore.alive(path, live)
        assert [e["id"] for e in holdstore.listing(conn, path)] == [live]
        holdstore.request(conn, path, live, "commit", "ana")
        with pytest.raises(holdstore.HoldError, match="already being decided: ana asked for commit"):
            holdstore.request(conn, path, live, "rollback", "bo")
        assert holdstore.requested(conn, [live, "other"]) == [(live, "commit", "ana")]
        with conn:
            assert holdstore.settle(conn, live, holdstore.COMMITTED, "ana", "committed")
            assert not holdstore.settle(conn, live, holdstore.ROLLED_BACK, "goex-proxy", "timeout")  # too late
        assert holdstore.get(conn, live)["state"] == "committed"
        assert holdstore.listing(conn, path) == [] and len(holdstore.listing(conn, path, everything=True)) == 1
        with pytest.raises(holdstore.HoldError, match="already committed"):
            holdstore.request(conn, path, live, "rollback", "bo")
        tag = (ids.tag_of(live) + 1) % ids.TAGS  # its file is there, and no live process holds it
        (ids.tags_folder(path) / f"{tag:04d}").touch()
        dead = live[:9] + ids._b32(tag * ids.PER_MS, 4)
        assert ids.tag_of(dead) == tag
        with conn:
            holdstore.insert(conn, dead, "shop", "mailbot", 2.0)
        with pytest.raises(holdstore.HoldError, match="no longer running"):
            holdstore.request(conn, path, dead, "commit", "ana")
        assert [e["id"] for e in holdstore.orphans(conn, path)] == [dead]
        with pytest.raises(Exception, match="no held transaction"):
            holdstore.get(conn, "NOPE")
        conn.close()
    finally:
        writer.close()
