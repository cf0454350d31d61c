"""The audit log's size per row, schema 11's layout against the one the proxy writes now (migration 12), on the same
generated rows (log_bench.py's: the same seed, so the same requests), with what each costs to read.

For each layout: file size / rows, and where the bytes go (SQLite's dbstat: the requests table, the blobs table, each
index); `audit.query(agent=X, since=1h)` in-process and `goex-proxy log --agent X --since 1h` as a subprocess
(medians); `audit.get` + the undo plan of undoable rows (as undo_bench.py times them, median and p99); reading
100,000 rows whole in seq order (what `log verify` and what-if do); and what the real writer (`AuditWriter`) spends
per request, intent and outcome, in CPU time of the whole process, old and new alternated over the same rows. Both
databases are cached under bench/.cache/ (`--regenerate` rebuilds them); `--log-rows 10000000` for ten million rows
(about 10 minutes to generate the old layout and 25 the new on a 2-core machine, 17 + 7 GB).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import log_bench
import undo_bench
from common import fmt, median, percentile, table, tool

TARGET_BYTES = 400.0
READ_ROWS = 100_000


def _requests(rng: Any, rows: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Requests (intent fields, then outcome fields) from log_bench's pool, each with its own id, token, Date,
    agent and client port, as the proxy hands them to the AuditWriter."""
    from goex_proxy.ids import RequestIds

    ids, pool = RequestIds(), log_bench._variants(rng, 50)
    intent_keys = ("method", "scheme", "host", "port", "path", "url", "http_version", "req_headers", "req_body",
                   "req_body_size", "req_body_sha256")
    outcome_keys = ("status", "resp_headers", "resp_body", "resp_body_size", "resp_body_sha256", "undo_class")
    agents = [a for a, _ in log_bench.AGENTS]
    out = []
    for _ in range(rows):
        v, rid, token = dict(rng.choice(pool)), ids.new(), f"{rng.getrandbits(64):016x}"[:13].encode()
        for body, digest in (("req_body", "req_body_sha256"), ("resp_body", "resp_body_sha256")):
            if v[body]:  # the proxy hashes the body it saw: the pool's digest is of the body before its token
                v[body] = v[body].replace(log_bench.TOKEN.encode(), token)
                v[digest] = hashlib.sha256(v[body]).hexdigest()
        now = time.time()
        v["resp_headers"] = v["resp_headers"].replace(log_bench.TOKEN, rid).replace(
            log_bench.POOL_DATE, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)))
        intent = {k: v[k] for k in intent_keys} | {"id": rid, "ts": now, "agent": rng.choice(agents),
                                                   "decision": "allow", "client": f"127.0.0.1:{rng.randrange(40000, 60000)}",
                                                   "rule": "bench/rule", "reason": "allowed by rule 'rule'"}
        duration = 5 + rng.random() * 400
        out.append((intent, {k: v[k] for k in outcome_keys} | {"ended": now + duration / 1000,
                                                                "duration_ms": round(duration, 3)}))
    return out


def grown(rows: int = 30_000, lag: int = 5, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Bytes per row of a log the real AuditWriter grows row by row (each outcome written `lag` requests after its
    intent, as replies come while new requests start), with room kept for outcomes and without, alternated: what
    the bulk-built database of `measure` cannot show (pages split by rows that grow, indexes filled in place).
    Medians over rounds: the whole file, the requests table and its indexes, and the share of the table's pages
    left empty."""
    import random

    from goex_proxy.audit import layout
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter

    def one(room: bytes) -> dict[str, float]:
        kept, layout.OUTCOME_ROOM = layout.OUTCOME_ROOM, room
        try:
            with tempfile.TemporaryDirectory(prefix="goex-bench-grown-") as tmp:
                path = Path(tmp) / "a.db"
                writer = AuditWriter(path, Seal(Path(tmp)))
                waiting, futures = [], []
                for intent, done in _requests(random.Random(5), rows):
                    futures.append(writer.record_intent(intent))
                    waiting.append((str(intent["id"]), done))
                    if len(waiting) > lag:
                        futures.append(writer.record_outcome(*waiting.pop(0)))
                    if len(futures) >= 64:  # as many in flight as a busy proxy has
                        for future in futures:
                            future.result(60)
                        futures = []
                futures += [writer.record_outcome(*w) for w in waiting]
                for future in futures:
                    future.result(60)
                writer.close()
                conn = sqlite3.connect(path)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                stat = {str(n): (int(size), int(unused)) for n, size, unused in conn.execute(
                    "SELECT name, sum(pgsize), sum(unused) FROM dbstat GROUP BY name")}
                conn.close()
                table, empty = stat.get("requests", (0, 0))
                return {"bytes_per_row": os.path.getsize(path) / rows, "requests": table / rows,
                        "indexes": sum(v[0] for k, v in stat.items() if k.startswith("idx_requests")) / rows,
                        "empty_share": empty / max(1, table)}
        finally:
            layout.OUTCOME_ROOM = kept

    runs: dict[str, list[dict[str, float]]] = {"no room": [], "room": []}
    for n in range(rounds):
        for kind in ("no room", "room") if n % 2 == 0 else ("room", "no room"):
            runs[kind].append(one(b"" if kind == "no room" else layout.OUTCOME_ROOM))
    return {kind: {key: median([r[key] for r in got]) for key in got[0]} for kind, got in runs.items()}


def writer_cost(rows: int = 3000, rounds: int = 5) -> dict[str, float]:
    """CPU microseconds per request (its intent, then its outcome) the real AuditWriter costs the process, old layout
    (schema 11, values as they are) against new, alternated, medians over rounds; rows from log_bench's pool."""
    import random

    from goex_proxy.audit import layout
    from goex_proxy.audit import store as audit
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter

    rng = random.Random(3)

    def made() -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return _requests(rng, rows)

    def one(old: bool, work: list[tuple[dict[str, Any], dict[str, Any]]]) -> float:
        every, stored, room = audit.MIGRATIONS, layout.stored, layout.OUTCOME_ROOM
        if old:
            audit.MIGRATIONS = every[:log_bench.OLD_SCHEMA]
            layout.stored = lambda fields, put, kind=(), **_: dict(fields)
            layout.OUTCOME_ROOM = b""
        try:
            with tempfile.TemporaryDirectory(prefix="goex-bench-writer-") as tmp:
                writer = AuditWriter(Path(tmp) / "a.db", Seal(Path(tmp)))
                t0 = time.process_time()
                pending = []
                for intent, done in work:
                    pending += [writer.record_intent(intent), writer.record_outcome(intent["id"], done)]
                for future in pending:
                    future.result(60)
                took = time.process_time() - t0
                writer.close()
                return took * 1e6 / rows
        finally:
            audit.MIGRATIONS, layout.stored, layout.OUTCOME_ROOM = every, stored, room

    times: dict[str, list[float]] = {"old": [], "new": []}
    for n in range(rounds):
        for kind in ("old", "new") if n % 2 == 0 else ("new", "old"):
            times[kind].append(one(kind == "old", made()))
    return {kind: median(values) for kind, values in times.items()}


def breakdown(path: Path) -> tuple[int, dict[str, int]]:
    """Rows, and bytes per b-tree (table or index) as dbstat counts its pages."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
        sizes = {str(name): int(size) for name, size in conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name")}
    finally:
        conn.close()
    return rows, sizes


def _timed(fn: Any, n: int) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return median(times)


def measure(path: Path, rules: Any, plans: int, cli_runs: int) -> dict[str, Any]:
    from goex_proxy.audit import store as audit

    rows, sizes = breakdown(path)
    indexes = sum(v for k, v in sizes.items() if k.startswith(("idx_requests", "sqlite_autoindex_requests")))
    out: dict[str, Any] = {
        "rows": rows, "file_bytes": os.path.getsize(path), "requests_bytes": sizes.get("requests", 0),
        "blobs_bytes": sizes.get("audit_blobs", 0), "index_bytes": indexes,
        "indexes": {k: v for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]) if k.startswith("idx_requests")},
    }
    out["bytes_per_row"] = out["file_bytes"] / rows
    conn = audit.open_db(path, readonly=True)
    out["query_ms"] = _timed(lambda: audit.query(conn, agent=log_bench.QUERY_AGENT, since=time.time() - 3600,
                                                 limit=50), 30)
    picked, _ = undo_bench.pick_ids(path, plans + 50, mixed=0, seed=11)  # the same ids in both (same rows, same seed)
    undo_bench.time_plans(conn, picked[:50], rules)
    timed = [g + r + p for _, _, g, r, p in undo_bench.time_plans(conn, picked[50:], rules)]
    out["get_plan_p50_ms"], out["get_plan_p99_ms"] = percentile(sorted(timed), 50), percentile(sorted(timed), 99)
    t0 = time.perf_counter()
    read = sum(1 for _ in itertools.islice(audit.iter_rows(conn), READ_ROWS))
    out["read_rows_s"] = time.perf_counter() - t0
    out["read_rows"] = read
    conn.close()
    with tempfile.TemporaryDirectory(prefix="goex-bench-size-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(f"version: 1\naudit: {{db: {json.dumps(str(path))}}}\n", encoding="utf-8")
        cli, _ = log_bench._time_cli([tool("goex-proxy"), "log", "--agent", log_bench.QUERY_AGENT, "--since", "1h",
                                      "--config", str(config)], cli_runs)
    out["cli_ms"] = median(cli)
    return out


def run(rows: int = 1_000_000, plans: int = 500, cli_runs: int = 7, regenerate: bool = False,
        say: Any = print) -> tuple[str, dict[str, Any]]:
    from goex_proxy.config import load_config
    from goex_proxy.undo.rules import load_packs

    results: dict[str, Any] = {}
    notes = []
    for layout in ("old", "new"):
        path, note = log_bench.prepare(rows, regenerate, say, part="audit-size", layout=layout)
        notes.append(f"{layout}: {note}")
        with tempfile.TemporaryDirectory(prefix="goex-bench-size-") as tmp:
            config_path = Path(tmp) / "config.yaml"
            config_path.write_text("version: 1\n", encoding="utf-8")
            rules = load_packs(list(load_config(config_path).undo_packs))
        say(f"[audit-size] measuring the {layout} layout ({path.name})...", flush=True)
        results[layout] = measure(path, rules, plans, cli_runs)
    old, new = results["old"], results["new"]
    say("[audit-size] timing the writer, old and new layout alternated...", flush=True)
    writer = writer_cost()
    say("[audit-size] growing a log row by row through the writer, with room for outcomes and without...", flush=True)
    growth = grown()

    def per_row(r: dict[str, Any], key: str) -> str:
        return fmt(r[key] / r["rows"], 0)

    lines = [
        ["bytes per row (file size / rows)", fmt(old["bytes_per_row"], 0), fmt(new["bytes_per_row"], 0),
         f"{old['bytes_per_row'] / new['bytes_per_row']:.2f}x", f"<= {TARGET_BYTES:.0f}",
         "PASS" if new["bytes_per_row"] <= TARGET_BYTES else "FAIL"],
        ["  of which the requests table", per_row(old, "requests_bytes"), per_row(new, "requests_bytes"), "", "", ""],
        ["  of which audit_blobs (headers, bodies, rule, reason)", per_row(old, "blobs_bytes"),
         per_row(new, "blobs_bytes"), "", "", ""],
        ["  of which the requests indexes", per_row(old, "index_bytes"), per_row(new, "index_bytes"), "", "", ""],
        ["file size, MB", fmt(old["file_bytes"] / 1e6, 0), fmt(new["file_bytes"] / 1e6, 0), "", "", ""],
        ["audit.query(agent, since=1h) ms", fmt(old["query_ms"], 2), fmt(new["query_ms"], 2), "", "<= 100",
         "PASS" if new["query_ms"] <= 100 else "FAIL"],
        ["goex-proxy log --agent X --since 1h ms (CLI)", fmt(old["cli_ms"], 0), fmt(new["cli_ms"], 0), "", "<= 100",
         "PASS" if new["cli_ms"] <= 100 else "FAIL"],
        [f"audit.get + undo plan ms, p50 / p99 ({plans} ids)",
         f"{old['get_plan_p50_ms']:.2f} / {old['get_plan_p99_ms']:.2f}",
         f"{new['get_plan_p50_ms']:.2f} / {new['get_plan_p99_ms']:.2f}", "", "<= 20",
         "PASS" if new["get_plan_p99_ms"] <= 20 else "FAIL"],
        [f"iter_rows: {READ_ROWS:,} rows read whole, s", fmt(old["read_rows_s"], 2), fmt(new["read_rows_s"], 2), "",
         "", ""],
        ["AuditWriter CPU per request (intent + outcome), us", fmt(writer["old"], 0), fmt(writer["new"], 0),
         f"{writer['old'] / writer['new']:.2f}x", "", ""],
    ]
    grown_lines = [[kind, fmt(g["bytes_per_row"], 0), fmt(g["requests"], 0), fmt(g["indexes"], 0),
                    f"{g['empty_share'] * 100:.0f}%"] for kind, g in growth.items()]
    index_lines = [[name, fmt(old["indexes"].get(name, 0) / old["rows"], 1), fmt(size / new["rows"], 1)]
                   for name, size in new["indexes"].items()]
    text = "\n".join([
        f"== Audit log size: {new['rows']:,} rows, schema 11's layout (old) against migration 12's (new), the same "
        "generated rows ==",
        "Databases: " + "; ".join(notes),
        table(["what", "old", "new", "old/new", "target", "result"], lines),
        table(["index, bytes per row", "old", "new"], index_lines),
        "A log grown row by row by the AuditWriter (30,000 of the same kind of rows, each outcome 5 requests after "
        "its intent; medians of 3 alternated rounds), bytes per row:",
        table(["new layout", "file", "requests table", "its indexes", "table pages empty"], grown_lines),
    ])
    return text, {"old": old, "new": new, "writer_us": writer, "grown": growth,
                  "pass_size": new["bytes_per_row"] <= TARGET_BYTES}


if __name__ == "__main__":
    print(run()[0])
