"""Issue 19's console benchmarks, side by side in one run (`python bench/run.py --only console`).

(a) Time to first byte of the console's log page over the 1,000,000-row audit database log_bench.py builds: a real
    `goex-proxy console` (uvicorn) over that database, a real HTTP client (http.client, one keep-alive connection)
    that traded the printed token for the session cookie, unfiltered and with each filter; the filters' requests are
    interleaved round by round; median and p95 per filter (goal <= 200 ms).
(b) The proxy's throughput with the console open and streaming (an SSE client connected to /events throughout the
    load, reading every row the stream sends) vs without, on one `goex-proxy run` with a console; and the cost of the
    console's indexes (migration 9) on writes: a second `goex-proxy run` whose audit database has them dropped.
    Alternating rounds (the order rotating), ratios of medians (goal for the stream: within noise).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import CACHE_DIR, Processes, free_port, median, percentile, table, tool, wait_port

TARGET_MS = 200.0
#: The indexes migration 9 adds for the console (dropped from the "without" proxy's database).
CONSOLE_INDEXES = ("idx_requests_agent_seq", "idx_requests_host_seq", "idx_requests_decision_seq",
                   "idx_requests_undo_class_seq")


def _filters() -> list[tuple[str, dict[str, str]]]:
    day = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() - 10 * 86400))
    day_end = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() - 9 * 86400))
    return [
        ("unfiltered", {}),
        ("agent=mailbot", {"agent": "mailbot"}),
        ("host=slack.com", {"host": "slack.com"}),
        ("decision=deny", {"decision": "deny"}),
        ("decision=report (1%)", {"decision": "report"}),
        ("undo_class=exact (none in this log)", {"undo_class": "exact"}),
        ("since=1h", {"since": "1h"}),
        ("a day 10 days ago (since+until)", {"since": day, "until": day_end}),
        ("until=10 days ago (older rows only)", {"until": day}),
        ("agent=nobody (matches nothing)", {"agent": "nobody"}),
        ("decision=hold (matches nothing)", {"decision": "hold"}),
        ("agent=mailbot&host=slack.com&decision=deny", {"agent": "mailbot", "host": "slack.com", "decision": "deny"}),
    ]


def sign_in(port: int, link: str) -> str:
    """Trade the printed link's token for the session cookie (the console's redirect sets it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", link.split(f":{port}", 1)[1])
    resp = conn.getresponse()
    resp.read()
    cookie = resp.getheader("set-cookie") or ""
    conn.close()
    if resp.status not in (302, 303, 307) or "=" not in cookie:
        raise SystemExit(f"bench: the console did not sign in ({resp.status}, {cookie!r})")
    return cookie.split(";", 1)[0]


def _link_from(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"open \(once[^)]*\): (\S+)", log.read_text(errors="replace") if log.exists() else "")
        if found:
            return found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"bench: no console link in {log}: {log.read_text(errors='replace')[-800:]}")


def _query(params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return "/" + (f"?{urlencode(params)}" if params else "")


def _plans(db_path: Path) -> dict[str, str]:
    """The query plan of each filter's page query, as the console builds it (data.page's SQL)."""
    from goex_proxy.console import data

    out = {}
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    now = time.time()
    for name, params in _filters():
        def ts(text: str | None) -> float | None:
            if not text:
                return None
            if text == "1h":
                return now - 3600
            return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M"))
        f = data.Filters(agent=params.get("agent"), host=params.get("host"), decision=params.get("decision"),
                         undo_class=params.get("undo_class"), since=ts(params.get("since")),
                         until=ts(params.get("until")))
        ran: list[str] = []
        conn.set_trace_callback(ran.append)
        data.page(conn, f)  # the page's own SQL: its filters, and the blocks of time it reads unfiltered (`times`)
        conn.set_trace_callback(None)
        sql = next(q for q in reversed(ran) if q.startswith("SELECT") and "ORDER BY ts DESC, seq DESC LIMIT" in q)
        out[name] = " | ".join(r[-1] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    conn.close()
    return out


def ttfb(procs: Processes, runs: int, say: Any) -> tuple[str, dict[str, Any]]:
    import log_bench

    db_path, note = log_bench.prepare(1_000_000, say=say, part="console")
    say(f"[console] {note}", flush=True)
    with tempfile.TemporaryDirectory(prefix="goex-bench-console-") as tmp:
        config = Path(tmp) / "config.yaml"  # the state directory is the cache's: the database's chain key is there
        config.write_text(f"version: 1\nstate_dir: {json.dumps(str(CACHE_DIR))}\n"
                          f"audit: {{db: {json.dumps(str(db_path))}}}\n", encoding="utf-8")
        port = free_port()
        log = Path(tmp) / "console.log"
        proc = procs.start([tool("goex-proxy"), "console", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
                           log=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_port(port, proc, timeout=120, what="goex-proxy console")
            cookie = sign_in(port, _link_from(log, proc))
            filters = _filters()
            times: dict[str, list[float]] = {name: [] for name, _ in filters}
            totals: dict[str, list[float]] = {name: [] for name, _ in filters}
            shown: dict[str, int] = {}
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            say(f"[console] log page TTFB: {len(filters)} filters x {runs} requests, interleaved", flush=True)
            for i in range(runs + 1):  # the first round warms (page cache, templates), untimed
                for name, params in filters:
                    t0 = time.perf_counter()
                    conn.request("GET", _query(params), headers={"Cookie": cookie})
                    resp = conn.getresponse()  # returns once the status line and headers are in: the first byte
                    t1 = time.perf_counter()
                    body = resp.read()
                    t2 = time.perf_counter()
                    if resp.status != 200:
                        raise SystemExit(f"bench: console {name}: {resp.status} {body[:300]!r}")
                    if i:
                        times[name].append((t1 - t0) * 1000)
                        totals[name].append((t2 - t0) * 1000)
                    shown[name] = body.count(b'href="/request/')
            conn.close()
        finally:
            procs.stop(proc)
    plans = _plans(db_path)
    results: dict[str, Any] = {"db": db_path.name, "runs": runs, "filters": {}}
    rows = []
    for name, _ in filters:
        ts = sorted(times[name])
        r: dict[str, Any] = {"p50_ms": median(ts), "p95_ms": percentile(ts, 95), "total_p50_ms": median(totals[name]),
             "rows_on_page": shown[name], "plan": plans[name]}
        r["pass"] = r["p50_ms"] <= TARGET_MS
        results["filters"][name] = r
        rows.append([name, f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['total_p50_ms']:.1f}",
                     str(r["rows_on_page"]), f"<= {TARGET_MS:.0f}", "PASS" if r["pass"] else "FAIL"])
    results["worst_p50_ms"] = max(r["p50_ms"] for r in results["filters"].values())
    results["pass"] = all(r["pass"] for r in results["filters"].values())
    text = table(["log page over 1,000,000 rows, filter", "TTFB p50 ms", "p95 ms", "whole page p50 ms",
                  "links on page", "goal", "result"], rows)
    text += "\n\nquery plans (data.page's SQL, ORDER BY ts DESC, seq DESC LIMIT 50):\n" + "\n".join(
        f"  {name}: {results['filters'][name]['plan']}" for name, _ in filters)
    return text, results


class Stream:
    """An SSE client on the console's /events, reading (and counting) everything it sends, in a thread."""

    def __init__(self, port: int, cookie: str) -> None:
        self.events = 0
        self.bytes = 0
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        first = self.sock.recv(65536)
        if b" 200" not in first.split(b"\r\n", 1)[0]:
            raise SystemExit(f"bench: /events refused: {first[:300]!r}")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.bytes += len(chunk)
                self.events += chunk.count(b"event: row")
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def streaming(procs: Processes, rounds: int, duration: float, conns: int, verbose: bool,
              keep: bool) -> tuple[str, dict[str, Any]]:
    import throughput

    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # the console's link, printed by `run`, read from its log
    workdir = Path(tempfile.mkdtemp(prefix="goex-bench-console-tp-"))
    bench = throughput.Bench(procs, workdir, verbose=verbose)
    say = print if verbose else (lambda *a, **k: None)
    try:
        bench.setup(only="upstream")  # the upstream only; the proxies below
        cport, cport2 = free_port(), free_port()
        bench.proxies["goex-proxy"] = bench._start_goex(config_lines=f"console: {{listen: '127.0.0.1:{cport}'}}\n")
        bench.proxies["goex-noidx"] = bench._start_goex("goex-noidx",
                                                        config_lines=f"console: {{listen: '127.0.0.1:{cport2}'}}\n")
        for p in bench.proxies.values():
            bench._check(p)
        noidx_db = workdir / "goex-noidx-home" / "audit.db"
        dropped = []
        with sqlite3.connect(noidx_db, timeout=30) as c:
            for name in CONSOLE_INDEXES:
                if c.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND name=?", (name,)).fetchone():
                    c.execute(f'DROP INDEX "{name}"')
                    dropped.append(name)
        proc = bench.proxies["goex-proxy"].proc
        wait_port(cport, proc, what="console in goex-proxy run")
        cookie = sign_in(cport, _link_from(workdir / "goex-proxy.log", proc))
        kinds = ["idle", "streaming", "noidx"]
        runs: dict[str, list[float]] = {k: [] for k in kinds}
        events: list[int] = []
        say(f"[console] throughput: warm-up, then {rounds} rotating rounds of {duration:g}s at {conns} connections: "
            "console idle / console streaming / without the console's indexes", flush=True)

        def one(kind: str, seconds: float) -> float:
            stream = Stream(cport, cookie) if kind == "streaming" else None
            try:
                if stream:
                    time.sleep(0.6)  # connected and polling before the load starts
                r = bench.measure("goex-noidx" if kind == "noidx" else "goex-proxy", "http", conns, seconds)
                if stream:
                    time.sleep(1.0)  # the rows of the window's end reach it
                    events.append(stream.events)
                    if stream.events < r.requests // 2:
                        raise SystemExit(f"bench: the stream sent {stream.events} rows for {r.requests} requests")
                return r.rps
            finally:
                if stream:
                    stream.close()

        for k in kinds:
            one(k, min(duration, 1.0))
        for i in range(rounds):
            for k in kinds[i % 3:] + kinds[:i % 3]:
                runs[k].append(one(k, duration))
    except SystemExit:
        keep = True
        raise
    finally:
        bench.close(keep, "console bench")
    med = {k: median(v) for k, v in runs.items()}
    per_round_stream = [s / i for s, i in zip(runs["streaming"], runs["idle"], strict=True)]
    per_round_idx = [i / n for i, n in zip(runs["idle"], runs["noidx"], strict=True)]
    idle_ratio = [x / med["idle"] for x in runs["idle"]]
    noise = (max(idle_ratio) - min(idle_ratio)) / 2
    ratio = med["streaming"] / med["idle"]
    res = {"idle_rps": med["idle"], "streaming_rps": med["streaming"], "noidx_rps": med["noidx"], "ratio": ratio,
           "stream_rounds": per_round_stream, "index_ratio": med["idle"] / med["noidx"],
           "index_rounds": per_round_idx, "noise": noise, "within_noise": 1 - ratio <= noise,
           "rows_streamed": events, "dropped": dropped, "rounds": rounds, "duration": duration, "conns": conns}
    rows = [
        ["goex-proxy run, console idle (no client)", f"{med['idle']:,.0f}", ", ".join(f"{x:,.0f}" for x in runs["idle"])],
        ["goex-proxy run, SSE client on /events", f"{med['streaming']:,.0f}",
         ", ".join(f"{x:,.0f}" for x in runs["streaming"])],
        ["goex-proxy run, without migration 9's indexes", f"{med['noidx']:,.0f}",
         ", ".join(f"{x:,.0f}" for x in runs["noidx"])],
    ]
    text = table([f"plain HTTP GETs, {conns} conns, {rounds} x {duration:g}s", "req/s (median)", "rounds"], rows)
    text += "\n\n" + table(["ratio", "median", "per round", "noise (idle rounds)", "result"], [
        ["streaming / idle", f"{ratio:.3f}", ", ".join(f"{x:.2f}" for x in per_round_stream), f"{noise:.0%}",
         "within noise" if res["within_noise"] else "OUTSIDE noise"],
        ["with / without the console indexes", f"{res['index_ratio']:.3f}", ", ".join(f"{x:.2f}" for x in per_round_idx),
         f"{noise:.0%}", ""],
    ])
    text += (f"\nrows the stream sent per {duration:g}s round: {', '.join(str(x) for x in events[1:])}; "
             f"indexes dropped in the 'without' proxy: {', '.join(dropped) or 'none (no migration 9)'}")
    return text, res


def run(procs: Processes, *, runs: int, rounds: int, duration: float, conns: int, verbose: bool = True,
        keep: bool = False) -> tuple[str, dict[str, Any]]:
    say = print if verbose else (lambda *a, **k: None)
    text_a, a = ttfb(procs, runs, say)
    text_b, b = streaming(procs, rounds, duration, conns, verbose, keep)
    return text_a + "\n\n" + text_b, {"ttfb": a, "streaming": b}
