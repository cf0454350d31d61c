"""Target 3: `goex-proxy log --agent X --since 1h` over a 1,000,000-row audit database in <= 100 ms.

The database is made with the project's own schema (`goex_proxy.audit.store.open_db`), then filled by one bulk
`executemany` transaction with realistic rows (30 days, several agents, headers, small bodies, hashes), stored as the
proxy stores them (`goex_proxy.audit.layout`: headers and bodies in compressed blobs; `layout="old"` writes schema 11's
layout, every value in its row, for audit_size_bench.py to compare), and cached under bench/.cache/. Rows are drawn
from a pool of payloads, but each carries what makes real ones differ: its own Date and X-Goex-Request-Id response
headers and a token of its own in each body (a message id, a node id), so that no two rows' bodies or response
headers are the same (a repeated body would be stored once and flatter the new layout); text in bodies is words, not
a repeated letter. When a cached database is reused more than a few minutes later, its last day of rows is
deleted and generated again to end "now" (otherwise `--since 1h` would find nothing); the row count stays the
same. The hash chain of these rows is not valid (random hashes of
the right size): `goex-proxy log verify` is not what is measured here.

Mutating rows answer as the real APIs do (Slack `{"ok": true, "channel", "ts"}`, GitHub's 201 with the comment's
`url`, S3 `x-amz-version-id`, a REST 201 with `Location`, a PUT with its pre-image), so that the shipped undo packs
can plan them: undo_bench.py plans undos from this same database.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CACHE_DIR, PYTHON, fmt, median, table, tool

TARGET_MS = 100.0
GEN_VERSION = 7  # 7: undo classes (6: real chain hashes; 5: random ones, which `undo` refuses)
DAYS = 30
AGENTS = [("mailbot", 30), ("slackbot", 25), ("ghbot", 15), ("s3sync", 15), ("research", 10), ("billing", 5)]
QUERY_AGENT = "mailbot"
STALE_AFTER_S = 300
RECENT_S = 86400  # the last day is regenerated when the cache is reused later

#: Replaced in each row by a token of its own (bodies) or its id (the X-Goex-Request-Id header); the pool's Date by the
#: row's own.
TOKEN = "@" * 13
POOL_DATE = "Tue, 24 Nov 2026 10:00:00 GMT"
WORDS = ("the of and to in is you that it he was for on are as with his they at be this have from or one had by word "
         "but not what all were we when your can said there use an each which she do how their if will up other about "
         "out many then them these so some her would make like him into time has look two more write go see number no "
         "way could people my than first water been call who oil its now find long down day did get come made may part "
         "status update deploy build release ticket customer invoice meeting report review merge branch fix issue").split()


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randrange(low, high)))


_ENDPOINTS = [
    # host, method, path template, request body?, status choices, response kind (see _response)
    ("slack.com", "POST", "/api/chat.postMessage", True, (200, 200, 200, 429), "slack"),
    ("slack.com", "GET", "/api/conversations.history", False, (200,), "json"),
    ("gmail.googleapis.com", "GET", "/gmail/v1/users/me/messages/{n:x}", False, (200, 200, 404), "json"),
    ("gmail.googleapis.com", "GET", "/gmail/v1/users/me/messages", False, (200,), "json"),
    ("api.github.com", "GET", "/repos/acme/widgets/issues/{n}", False, (200, 200, 404), "json"),
    ("api.github.com", "POST", "/repos/acme/widgets/issues/{n}/comments", True, (201, 201, 422), "github-comment"),
    ("acme-data.s3.amazonaws.com", "GET", "/exports/2026/{n}.csv", False, (200, 200, 304), "json"),
    ("acme-data.s3.amazonaws.com", "PUT", "/uploads/{n}.json", True, (200,), "s3-put"),
    ("api.openai.com", "POST", "/v1/chat/completions", True, (200, 200, 200, 500), "json"),
    ("api.stripe.com", "GET", "/v1/charges/ch_{n:x}", False, (200, 404), "json"),
    ("crm.internal.example.com", "PUT", "/api/v2/contacts/{n}", True, (200, 200, 200, 409), "put-preimage"),
    ("tickets.internal.example.com", "POST", "/api/v1/tickets", True, (201, 201, 201, 400), "created"),
]
#: Mutating endpoints whose allowed, successful rows the shipped undo packs can plan (undo_bench.py picks its request
#: ids among these): a short name, host, method, path prefix, and the statuses with which the call took effect.
UNDOABLE = [
    ("slack post", "slack.com", "POST", "/api/chat.postMessage", (200,)),
    ("GitHub comment", "api.github.com", "POST", "/repos/acme/widgets/issues/", (201,)),
    ("REST 201 create", "tickets.internal.example.com", "POST", "/api/v1/tickets", (201,)),
    ("S3 versioned PUT", "acme-data.s3.amazonaws.com", "PUT", "/uploads/", (200,)),
    ("REST PUT w/ pre-image", "crm.internal.example.com", "PUT", "/api/v2/contacts/", (200,)),
]


def _response(rng: random.Random, kind: str, host: str, path: str, n: int, status: int
              ) -> tuple[list[tuple[str, str]], bytes, dict[str, Any]]:
    """Response headers (besides the common ones), body, and pre-image columns, as the real API would answer."""
    pre: dict[str, Any] = {}
    extra: list[tuple[str, str]] = []
    if kind == "slack":  # Slack answers 200 with "ok"; the message's channel and ts are what undo deletes by
        body: dict[str, Any] = ({"ok": True, "channel": "C0BOTS", "ts": f"{1764000000 + n % 10**6}.{n % 10**6:06d}",
                                 "message": {"type": "message", "text": "status update", "user": "U0BOT",
                                             "client_msg_id": TOKEN}}
                                if status == 200 else {"ok": False, "error": "ratelimited"})
    elif kind == "github-comment":  # GitHub: 201 with Location and the comment, which names its own API url
        cid = rng.randrange(10**8, 10**9)
        url = f"https://{host}/repos/acme/widgets/issues/comments/{cid}"
        body = {"id": cid, "node_id": f"IC_kwDO{TOKEN}", "url": url,
                "html_url": f"https://github.com/acme/widgets/issues/{n}#issuecomment-{cid}",
                "body": "status update " + _words(rng, 2, 24), "user": {"login": "ghbot", "id": 41898282},
                "created_at": "2026-11-24T10:00:00Z", "updated_at": "2026-11-24T10:00:00Z"}
        if status == 201:
            extra.append(("Location", url))
        else:
            body = {"message": "Validation Failed", "errors": [{"code": "invalid"}]}
    elif kind == "created":  # a generic REST create: 201 with Location and the new resource
        tid = rng.randrange(10**5, 10**6)
        body = ({"id": tid, "ref": TOKEN, "title": f"ticket {n}", "status": "open", "created_at": "2026-11-24T10:00:00Z"}
                if status == 201 else {"error": "invalid", "message": "title is required"})
        if status == 201:
            extra.append(("Location", f"https://{host}{path}/{tid}"))
    elif kind == "s3-put":  # versioned bucket: S3 names the new version; no body
        extra += [("ETag", f'"{rng.getrandbits(128):032x}"'), ("x-amz-version-id", f"{rng.getrandbits(160):040x}"[:32]),
                  ("x-amz-request-id", f"{rng.getrandbits(64):016X}"), ("Server", "AmazonS3")]
        return extra, b"", pre
    elif kind == "put-preimage":  # a PUT the proxy read the resource before (pre-image), to put it back on undo
        was = {"id": n, "version": TOKEN, "name": f"Contact {n}", "email": f"c{n}@example.com", "tags": ["lead"] * rng.randrange(0, 4),
               "updated_at": "2026-11-20T10:00:00Z"}
        pre_body = json.dumps(was).encode()
        pre = {"pre_status": 200, "pre_body": pre_body, "pre_body_size": len(pre_body),
               "pre_headers": json.dumps([["Content-Type", "application/json"], ["Content-Length", str(len(pre_body))],
                                          ["ETag", f'W/"{n:x}"']])}
        body = ({**was, "tags": ["customer"], "etag": TOKEN, "updated_at": "2026-11-24T10:00:00Z"} if status == 200
                else {"error": "conflict", "message": "the contact was modified"})
    else:
        body = {"ok": status < 400, "id": TOKEN, "n": n, "items": list(range(rng.randrange(0, 12))),
                "note": _words(rng, 3, 40)}
    return extra, json.dumps(body).encode(), pre


def _schema_fingerprint(db_path: Path) -> str:
    conn = sqlite3.connect(db_path)
    try:
        sql = "\n".join(r[0] or "" for r in conn.execute("SELECT sql FROM sqlite_master ORDER BY name"))
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    return hashlib.sha256(f"{version}\n{sql}".encode()).hexdigest()[:12]


#: The layouts a database can be generated in: as the proxy writes now, or as schema 11 (before migration 12) did.
LAYOUTS = ("new", "old")
#: How many migrations make the old layout's schema.
OLD_SCHEMA = 11


def _open_schema(path: Path, layout: str) -> None:
    """Create the project's schema at `path`: all migrations, or (old layout) those before migration 12."""
    from goex_proxy.audit import store as audit
    from goex_proxy.audit.seal import Seal

    every = audit.MIGRATIONS
    if layout == "old":
        audit.MIGRATIONS = every[:OLD_SCHEMA]
    try:
        audit.open_db(path, seal=Seal(path.parent)).close()
    finally:
        audit.MIGRATIONS = every


def _current_fingerprint(layout: str = "new") -> str:
    with tempfile.TemporaryDirectory(prefix="goex-bench-schema-") as tmp:
        path = Path(tmp) / "schema.db"
        _open_schema(path, layout)
        return _schema_fingerprint(path)


def _shipped_undo_rules() -> Any:
    """The undo rules a config without `undo_rules` loads: every shipped pack, the generic REST one last."""
    from goex_proxy.presets import resolve_undo, undo_names
    from goex_proxy.undo.rules import load_packs

    names = [n for n in undo_names() if n != "rest"] + ["rest"]
    return load_packs([resolve_undo(f"builtin:{n}", Path(".")) for n in names])


def _undo_class(rules: Any, v: dict[str, Any]) -> str | None:
    """The undo class the proxy records with this exchange (`addons/rows.undo_class`): none for a read."""
    from goex_proxy.undo.plan import Exchange, classify

    if v["method"] in ("GET", "HEAD", "OPTIONS"):
        return None
    pairs = [tuple(p) for p in json.loads(v["resp_headers"])]
    pre = tuple(tuple(p) for p in json.loads(v["pre_headers"])) if v["pre_headers"] else ()
    return classify(rules, Exchange(v["method"], v["url"], tuple(tuple(p) for p in json.loads(v["req_headers"])),
                                    v["req_body"], v["status"], tuple(pairs), v["resp_body"], v["pre_status"], pre,
                                    v["pre_body"], v["pre_body_size"]))


def _variants(rng: random.Random, n_per_endpoint: int = 200) -> list[dict[str, Any]]:
    """Pools of realistic request/response payloads to pick rows from (fast to generate, varied to store), each with
    the undo class the shipped packs give it."""
    from goex_proxy.credentials.redact import redacted_headers_json

    rules = _shipped_undo_rules()
    out = []
    for host, method, template, has_body, statuses, kind in _ENDPOINTS:
        for _ in range(n_per_endpoint):
            n = rng.randrange(1, 10**7)
            path = template.format(n=n)
            query = f"?page={rng.randrange(1, 9)}&per_page=50" if method == "GET" and rng.random() < 0.3 else ""
            req_body = None
            headers = [("Host", host), ("User-Agent", "python-httpx/0.28.1"), ("Accept", "*/*"),
                       ("Accept-Encoding", "gzip, deflate"), ("Authorization", "Bearer xoxb-placeholder")]
            if has_body:
                req_body = json.dumps({"channel": "C0BOTS", "text": f"status update {TOKEN} " + _words(rng, 2, 24),
                                       "n": n}).encode()
                headers += [("Content-Type", "application/json"), ("Content-Length", str(len(req_body)))]
            status = rng.choice(statuses)
            extra, resp_body, pre = _response(rng, kind, host, path, n, status)
            resp_headers = [("Content-Type", "application/json; charset=utf-8"),
                            ("Content-Length", str(len(resp_body))),
                            ("Date", POOL_DATE), ("X-Goex-Request-Id", TOKEN),
                            ("Cache-Control", "no-store"), *extra]
            out.append({
                "method": method, "scheme": "https", "host": host, "port": 443, "path": path + query,
                "url": f"https://{host}{path}{query}", "http_version": "HTTP/1.1",
                "req_headers": redacted_headers_json(headers), "req_body": req_body,
                "req_body_size": len(req_body) if req_body else 0,
                "req_body_sha256": hashlib.sha256(req_body).hexdigest() if req_body else None,
                "status": status, "resp_headers": redacted_headers_json(resp_headers), "resp_body": resp_body,
                "resp_body_size": len(resp_body), "resp_body_sha256": hashlib.sha256(resp_body).hexdigest(),
                "pre_status": None, "pre_headers": None, "pre_body": None, "pre_body_size": None, **pre,
            })
            out[-1]["undo_class"] = _undo_class(rules, out[-1])
    return out


def _fill(conn: sqlite3.Connection, cols: list[str], rows: int, start: float, end: float, seed: int,
          new_layout: bool = True) -> None:
    """Insert `rows` rows with timestamps spread evenly (jittered, ascending) over [start, end), stored as the proxy
    stores them (`new_layout`) or as schema 11 did."""
    from goex_proxy.audit import blobs, layout, names
    from goex_proxy.audit import store as audit
    from goex_proxy.audit.seal import Seal

    rng = random.Random(seed)
    store, named = blobs.BlobStore(), names.Names()
    # Real chain hashes under the log's key (`undo` acts only on rows whose hashes hold), chained on the last row.
    key = Seal(Path(conn.execute("PRAGMA database_list").fetchone()[2]).parent).key(create=True)
    last = conn.execute("SELECT hash FROM requests ORDER BY seq DESC LIMIT 1").fetchone()
    row_hash, outcome_hash = audit.row_hash, audit.outcome_hash
    columns = cols + [c for c in layout.BLOB_COLUMNS if new_layout]
    pool = _variants(rng)
    names = [a for a, _ in AGENTS]
    agent_picks = rng.choices(names, [w for _, w in AGENTS], k=rows)
    from goex_proxy.ids import RequestIds

    ids = RequestIds()
    step = (end - start) / rows
    rules = {"slack.com": "slack-post-only/read channels", "api.github.com": "github-readonly/read the API"}

    def make_rows():  # type: ignore[no-untyped-def]
        rand = rng.random
        npool = len(pool)
        token_bits = rng.getrandbits
        gmtime, strftime, sha256 = time.gmtime, time.strftime, hashlib.sha256
        put = lambda value, family: store.put(conn, value, family)  # noqa: E731
        name = lambda value: named.id_of(conn, value)  # noqa: E731
        prev = str(layout.hex_of(last[0])) if last else ""
        for i in range(rows):
            ts = start + (i + rand() * 0.9) * step
            v = pool[int(rand() * npool)]
            r = rand()
            decision = "allow" if r < 0.86 else "deny" if r < 0.97 else "report" if r < 0.99 else "error"
            row = dict(v)
            rid, token = ids.new(ts), f"{token_bits(64):016x}"[:13]
            if row["resp_headers"]:
                row["resp_headers"] = row["resp_headers"].replace(POOL_DATE, strftime(
                    "%a, %d %b %Y %H:%M:%S GMT", gmtime(ts))).replace(TOKEN, rid)
            for body, digest in (("req_body", "req_body_sha256"), ("resp_body", "resp_body_sha256"),
                                 ("pre_body", None)):
                if row[body] and TOKEN.encode() in row[body]:
                    row[body] = row[body].replace(TOKEN.encode(), token.encode())
                    if digest:
                        row[digest] = sha256(row[body]).hexdigest()
            duration = 5 + rand() * 400
            row.update(id=rid, ts=ts, agent=agent_picks[i], client=f"127.0.0.1:{40000 + int(rand() * 20000)}",
                       decision=decision, rule=rules.get(v["host"], f"{v['host']}/rule"),
                       reason=f"allowed by rule '{v['host']} rule'", report=None, error=None,
                       ended=ts + duration / 1000, duration_ms=round(duration, 3))
            if decision == "deny":
                row.update(reason=f"no rule allows {v['method']} {v['host']}{v['path']}", status=403, resp_body=None,
                           resp_body_size=0, resp_body_sha256=None, pre_status=None, pre_headers=None, pre_body=None,
                           pre_body_size=None, undo_class=None)
            elif decision == "report":
                row["report"] = "report mode: would be denied by rule 'never delete'"
            elif decision == "error":
                row.update(status=None, resp_headers=None, resp_body=None, resp_body_size=None, resp_body_sha256=None,
                           error="upstream connection reset", undo_class=None)
            row["prev_hash"] = prev
            row["hash"] = prev = row_hash(key, prev, row)
            row["outcome_hash"] = outcome_hash(key, prev, row)
            if new_layout:  # as the writer stores it (its prev_hash left to the row before)
                row = {**layout.stored(row, put, (row["host"], row["method"]), name=name), "prev_hash": layout.DERIVED}
            yield tuple(row.get(c) for c in columns)

    conn.executemany(f"INSERT INTO requests ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                     make_rows())


def _columns(conn: sqlite3.Connection) -> list[str]:
    existing = {r[1] for r in conn.execute("PRAGMA table_info(requests)")}
    return [c for c in ("id", "ts", "agent", "client", "method", "scheme", "host", "port", "path", "url",
                        "http_version", "req_headers", "req_body", "req_body_size", "req_body_sha256", "decision",
                        "rule", "reason", "report", "status", "resp_headers", "resp_body", "resp_body_size",
                        "resp_body_sha256", "error", "ended", "duration_ms", "prev_hash", "hash", "outcome_hash", "pre_status",
                        "pre_headers", "pre_body", "pre_body_size", "undo_class")
            if c in existing]


def generate(path: Path, rows: int, now: float, layout: str = "new") -> tuple[float, float]:
    """Create the database: the older 29 days as a base, the last day as the refreshable recent part.

    Returns (base_end timestamp, seconds taken)."""
    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".tmp")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    _open_schema(tmp, layout)  # the project's schema and migrations
    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    cols = _columns(conn)
    indexes = [r[0] for r in conn.execute(
        "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='requests' AND sql IS NOT NULL")]
    recent = rows // DAYS
    base_end = now - RECENT_S
    conn.execute("BEGIN")
    for sql in indexes:  # bulk load without indexes, then build them once
        name = sql.split("INDEX", 1)[1].split("ON", 1)[0].replace("IF NOT EXISTS", "").strip().strip('"[]`')
        conn.execute(f'DROP INDEX "{name}"')
    _fill(conn, cols, rows - recent, now - DAYS * 86400, base_end, seed=7, new_layout=layout == "new")
    _fill(conn, cols, recent, base_end, now, seed=int(now), new_layout=layout == "new")
    for sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL")  # as the proxy leaves it
    conn.close()
    os.replace(tmp, path)
    return base_end, time.perf_counter() - t0


def _is_new_layout(conn: sqlite3.Connection) -> bool:
    return conn.execute("PRAGMA user_version").fetchone()[0] > OLD_SCHEMA


def refresh(path: Path, rows: int, base_end: float, now: float) -> float:
    """Replace the recent part (newer than base_end) by a fresh last day ending now; the row count stays the same."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    new_layout = _is_new_layout(conn)
    if new_layout:  # the blobs of the rows removed go with them (as a prune does)
        from goex_proxy.audit import blobs, layout

        named = conn.execute(f"SELECT {', '.join(layout.BLOB_COLUMNS)} FROM requests WHERE ts > ?", (base_end,))
        blobs.release(conn, [ref for found in named.fetchall() for ref in found if ref is not None])
    conn.execute("DELETE FROM requests WHERE ts > ?", (base_end,))
    have = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    _fill(conn, _columns(conn), rows - have, now - RECENT_S, now, seed=int(now), new_layout=new_layout)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - t0


def prepare(rows: int, regenerate: bool = False, say: Any = print, part: str = "log", layout: str = "new"
            ) -> tuple[Path, str]:
    """The cached database (made or refreshed as needed), and a note on what was done."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    fp = _current_fingerprint(layout)
    kind = "" if layout == "new" else f"{layout}-"
    path = CACHE_DIR / f"audit-{kind}{rows}-g{GEN_VERSION}-{fp}.db"
    meta_path = path.with_name(path.name + ".json")
    now = time.time()
    if path.exists() and meta_path.exists() and not regenerate:
        meta = json.loads(meta_path.read_text())
        if now - meta["newest_ts"] <= STALE_AFTER_S:
            return path, f"cached {path.name}"
        took = refresh(path, rows, meta["base_end"], now)
        meta["newest_ts"] = now
        meta_path.write_text(json.dumps(meta))
        return path, f"cached {path.name}, its last day of rows regenerated to end now ({took:.1f}s)"
    for old in CACHE_DIR.glob(f"audit-{kind}{rows}-*.db*"):  # an older generator or schema: replace it
        old.unlink(missing_ok=True)
    say(f"[{part}] generating a {rows:,}-row audit database ({layout} layout) in {CACHE_DIR} (cached for later "
        "runs)...", flush=True)
    base_end, took = generate(path, rows, now, layout)
    meta_path.write_text(json.dumps({"rows": rows, "generated_at": now, "base_end": base_end, "newest_ts": now}))
    return path, f"generated {path.name} in {took:.1f}s"


def _time_cli(argv: list[str], runs: int) -> tuple[list[float], str]:
    times, out = [], ""
    subprocess.run(argv, capture_output=True)  # warm the page cache and .pyc files
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True)
        times.append((time.perf_counter() - t0) * 1000)
        if proc.returncode != 0:
            raise SystemExit(f"bench: {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-800:]}")
        out = proc.stdout.decode()
    return times, out


def import_breakdown(module: str = "goex_proxy.cli", top: int = 6, code: str | None = None) -> str:
    """Third-party packages whose first import costs most under `module` (or what `code` imports), and which of our
    modules imports them."""
    proc = subprocess.run([PYTHON, "-X", "importtime", "-c", code or f"import {module}"], capture_output=True, text=True)
    entries: list[tuple[int, str, int]] = []  # (depth, module, cumulative us), children listed before parents
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        entries.append(((len(parts[2]) - len(parts[2].lstrip())) // 2, parts[2].strip(), int(parts[1])))
    best: dict[str, tuple[int, str]] = {}
    for i, (depth, name, cum) in enumerate(entries):
        pkg = name.split(".")[0]
        if pkg == "goex_proxy" or pkg in best and best[pkg][0] >= cum:
            continue
        via, want = "", depth - 1
        for d, parent, _ in entries[i + 1:]:  # the nearest of our modules up the import chain
            if d == want:
                if parent.startswith("goex_proxy"):
                    via = parent
                    break
                want -= 1
        best[pkg] = (cum, via)
    ranked = sorted(((cum, pkg, via) for pkg, (cum, via) in best.items()), reverse=True)[:top]
    return ", ".join(f"{pkg} {cum / 1000:.0f}" + (f" (via {via})" if via else "") for cum, pkg, via in ranked)


def run(rows: int = 1_000_000, cli_runs: int = 9, query_runs: int = 50, regenerate: bool = False,
        say: Any = print) -> tuple[str, dict[str, Any]]:
    from goex_proxy.audit import names
    from goex_proxy.audit import store as audit

    db_path, note = prepare(rows, regenerate, say)
    with tempfile.TemporaryDirectory(prefix="goex-bench-log-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(f"version: 1\naudit: {{db: {json.dumps(str(db_path))}}}\n", encoding="utf-8")
        goex = tool("goex-proxy")
        say(f"[log] timing the CLI ({cli_runs} runs each) and the in-process query ({query_runs} runs)", flush=True)
        cli, out = _time_cli([goex, "log", "--agent", QUERY_AGENT, "--since", "1h", "--config", str(config)], cli_runs)
        cli_json, out_json = _time_cli([goex, "log", "--agent", QUERY_AGENT, "--since", "1h", "--json",
                                        "--config", str(config)], cli_runs)
        floor, _ = _time_cli([PYTHON, "-c", "pass"], cli_runs)
        imports, _ = _time_cli([PYTHON, "-c", "import goex_proxy.cli"], cli_runs)

    heavy = import_breakdown()
    shown = sum(1 for line in out_json.splitlines() if line.startswith("{"))
    db = audit.open_db(db_path, readonly=True)
    total = db.execute("SELECT max(seq) FROM requests").fetchone()[0]
    since = time.time() - 3600
    agent_is, agent_values = names.term(db, "agent", QUERY_AGENT)  # its name, or its id (as audit.query has it)
    in_hour = db.execute(f"SELECT count(*) FROM requests WHERE {agent_is} AND ts >= ?",
                         (*agent_values, since)).fetchone()[0]
    ran: list[str] = []
    db.set_trace_callback(ran.append)
    audit.query(db, agent=QUERY_AGENT, since=since, limit=50)  # the listing's own SQL, within its blocks of time
    db.set_trace_callback(None)
    listing = next(q for q in reversed(ran) if q.startswith("SELECT") and "ORDER BY ts DESC, seq DESC LIMIT" in q)
    plan = " | ".join(r[-1] for r in db.execute(f"EXPLAIN QUERY PLAN {listing}"))

    def timed(fn: Any, n: int) -> float:
        fn()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1000)
        return median(ts)

    q_target = timed(lambda: audit.query(db, agent=QUERY_AGENT, since=time.time() - 3600, limit=50), query_runs)
    q_open = timed(lambda: audit.query(audit.open_db(db_path, readonly=True), agent=QUERY_AGENT,
                                       since=time.time() - 3600, limit=50), query_runs)
    q_agent = timed(lambda: audit.query(db, agent=QUERY_AGENT, limit=50), query_runs)
    q_since = timed(lambda: audit.query(db, since=time.time() - 3600, limit=50), query_runs)
    q_host = timed(lambda: audit.query(db, host="slack.com", since=time.time() - 86400, limit=50), query_runs)
    q_decision = timed(lambda: audit.query(db, decision="error", limit=50), max(3, query_runs // 10))
    db.close()

    cli_ms, json_ms = median(cli), median(cli_json)
    rows_out = [
        ["goex-proxy log --agent X --since 1h (table)", fmt(cli_ms, 1), f"{min(cli):.0f}-{max(cli):.0f}",
         f"<= {TARGET_MS:.0f}", "PASS" if cli_ms <= TARGET_MS else "FAIL"],
        ["goex-proxy log --agent X --since 1h --json", fmt(json_ms, 1), f"{min(cli_json):.0f}-{max(cli_json):.0f}",
         "", ""],
        ["  of which: python -c pass (interpreter start)", fmt(median(floor), 1), "", "", ""],
        ["  of which: python -c 'import goex_proxy.cli'", fmt(median(imports), 1), "", "", ""],
        ["audit.query(agent, since=1h) in-process", fmt(q_target, 2), "", f"<= {TARGET_MS:.0f}",
         "PASS" if q_target <= TARGET_MS else "FAIL"],
        ["open_db(readonly) + that query", fmt(q_open, 2), "", "", ""],
        ["audit.query(agent) no since", fmt(q_agent, 2), "", "", ""],
        ["audit.query(since=1h) no agent", fmt(q_since, 2), "", "", ""],
        ["audit.query(host, since=24h)", fmt(q_host, 2), "", "", ""],
        ["audit.query(decision=error) (3% of rows)", fmt(q_decision, 2), "", "", ""],
    ]
    text = "\n".join([
        f"== Audit log query: {total:,} rows over {DAYS} days, {len(AGENTS)} agents; agent {QUERY_AGENT!r} has "
        f"{in_hour} rows in the last hour, {shown} shown (--limit 50) ==",
        f"Database: {note}. Query plan: {plan}",
        table(["what (median wall time)", "ms", "range ms", "target ms", "result"], rows_out),
        f"Costliest third-party imports of goex_proxy.cli, ms (nested ones overlap): {heavy}",
    ])
    return text, {"cli_ms": cli_ms, "cli_json_ms": json_ms, "query_ms": q_target, "python_floor_ms": median(floor),
                  "import_ms": median(imports), "pass_cli": cli_ms <= TARGET_MS, "pass_query": q_target <= TARGET_MS}


if __name__ == "__main__":
    print(run()[0])
