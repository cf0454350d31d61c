"""Gap records: where pruning removed a run of audit rows, what joins the kept rows around it, signed under the
chain key so that `log verify` can tell a prune from a removal."""

from __future__ import annotations

import hmac
import json
import sqlite3
from dataclasses import dataclass, replace
from typing import Any

from .seal import chain_hash


@dataclass(frozen=True)
class Gap:
    """A run of removed rows: kept rows before (its hash, "" at the start) and after it (`next_seq`), the removed
    seqs, how many, the hash of the last removed row (what the next row's prev_hash names), when, and the MAC."""

    next_seq: int
    first_seq: int
    last_seq: int
    rows: int
    before_hash: str
    last_hash: str
    at: float
    mac: str = ""

    def signed(self, key: bytes) -> Gap:
        return replace(self, mac=gap_mac(key, self))

    def fields(self) -> tuple[Any, ...]:
        return (self.next_seq, self.first_seq, self.last_seq, self.rows, self.before_hash, self.last_hash, self.at)


def gap_mac(key: bytes, gap: Gap) -> str:
    return chain_hash(key, b"goex-audit-gap:" + json.dumps(gap.fields(), separators=(",", ":")).encode())


def gaps(conn: sqlite3.Connection, after: int = 0, upto: int | None = None) -> dict[int, Gap]:
    """The gap records (all, or those before the kept rows after seq `after` up to `upto`), by the seq of the kept
    row after each; none in a log no prune has touched (or whose schema predates pruning)."""
    sql = "SELECT next_seq, first_seq, last_seq, rows, before_hash, last_hash, at, mac FROM audit_gaps WHERE next_seq > ?"
    try:
        rows = conn.execute(sql + (" AND next_seq <= ?" if upto is not None else ""),
                            (after,) if upto is None else (after, upto)).fetchall()
    except sqlite3.OperationalError:  # no audit_gaps table: a read-only look at a log older than migration 11
        return {}
    return {int(r[0]): Gap(*r) for r in rows}


def gap_holds(key: bytes | None, gap: Gap | None, before_hash: str, prev_hash: str) -> bool:
    """Whether a gap record, signed under the key, joins the kept row before it to the one after it."""
    return (key is not None and gap is not None and hmac.compare_digest(gap.mac, gap_mac(key, gap))
            and gap.before_hash == before_hash and gap.last_hash == prev_hash)
