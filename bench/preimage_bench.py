"""Target 5: the proxy's overhead for a mutating call with a pre-image read is one upstream round trip plus <= 2 ms.

Real parts on 127.0.0.1, as throughput.py starts them (its Bench): the bench upstream (which answers GET and PUT with
the same JSON resource), bare mitmdump, and two `goex-proxy run`s with the same policy (the throughput policy plus
one rule allowing PUT /bench/items/*): one with the default undo rules (every shipped pack; `builtin:rest` reads a
pre-image before every PUT, PATCH or DELETE), one with `undo_rules: []` (no pre-image, no undo class). One
connection, sequential requests (loadgen.py at --conns 1), alternated by round:

    direct GET to the upstream (one round trip), mitmdump PUT, goex PUT without undo rules, goex PUT + pre-image

overhead = (goex PUT + pre-image) - (goex PUT without undo rules) - (direct GET), on medians (and on p99s, which
are only indicative: a difference of tails is not the tail of a difference). Before measuring, it checks that the
proxy with rules recorded a pre-image (pre_status 200) and that `goex-proxy undo ID --dry-run` plans its PUT, and
that the other recorded none.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Processes, fmt, median, signed, table, tool
from policies_gen import throughput_policy
from throughput import Bench, Run

from goex_proxy.audit import layout

TARGET_MS = 2.0
BODY = json.dumps({"id": 42, "name": "widget 42", "color": "blue", "tags": ["bench", "undo"], "count": 43})
PUT = ("--method", "PUT", "--body", BODY)
PRE, NO_UNDO = "goex-preimage", "goex-noundo"
#: (label, proxy or None for direct, request options)
CASES = [("direct GET (upstream round trip)", None, ()), ("mitmdump PUT", "mitmdump", PUT),
         ("goex PUT, undo_rules: []", NO_UNDO, PUT), ("goex PUT + pre-image read", PRE, PUT)]


def preimage_policy() -> dict[str, Any]:
    doc = throughput_policy("127.0.0.1")
    doc["name"] = "bench-preimage"
    doc["rules"].append({"name": "bench updates", "allow": {"host": "127.0.0.1", "methods": ["PUT"],
                                                            "path": "/bench/items/*"}})
    return doc


def _last_put(db: Path, timeout: float = 10.0) -> dict[str, Any]:
    """The newest recorded PUT with its outcome (the audit writer is a thread: wait for it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                found = next(layout.read(conn, "SELECT id, decision, status, pre_status FROM requests WHERE "
                                         "method = 'PUT' AND status IS NOT NULL ORDER BY seq DESC LIMIT 1"), None)
            finally:
                conn.close()
            if found is not None:
                return found  # as written: the id unpacked, the decision given back
        except sqlite3.Error:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: no PUT with an outcome recorded in {db}")
        time.sleep(0.1)


def _check_put(bench: Bench, scheme: str) -> str:
    """A few PUTs through each goex-proxy; the one with rules read a pre-image and can plan the undo."""
    for name in (PRE, NO_UNDO):
        bench.measure(name, scheme, 1, 0.3, PUT)
    home = {name: bench.dir / f"{name}-home" for name in (PRE, NO_UNDO)}
    with_pre, without = _last_put(home[PRE] / "audit.db"), _last_put(home[NO_UNDO] / "audit.db")
    if (with_pre["decision"], with_pre["status"], with_pre["pre_status"]) != ("allow", 200, 200):
        raise SystemExit(f"bench: {PRE} did not record an allowed PUT with a pre-image: {with_pre}")
    if (without["decision"], without["status"], without["pre_status"]) != ("allow", 200, None):
        raise SystemExit(f"bench: {NO_UNDO} should record its PUT without a pre-image: {without}")
    proc = subprocess.run([tool("goex-proxy"), "undo", with_pre["id"], "--dry-run", "--json", "--config",
                           str(home[PRE] / "config.yaml")], capture_output=True, text=True)
    plan = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    if proc.returncode != 0 or plan.get("verdict") != "plan":
        raise SystemExit(f"bench: goex-proxy undo {with_pre['id']} --dry-run did not plan: {proc.stdout[-400:]}"
                         f"{proc.stderr[-400:]}")
    steps = "; ".join(f"{s['method']} {s['url']}" for s in plan["steps"])
    return f"{plan['rule']} ({plan['fidelity']}): {steps}"


def run(procs: Processes, *, rounds: int = 5, duration: float = 1.5, schemes: tuple[str, ...] = ("https",),
        verbose: bool = True, keep: bool = False) -> tuple[str, dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="goex-bench-preimage-"))
    bench = Bench(procs, workdir, verbose=verbose)
    try:
        return _run(bench, rounds, duration, schemes)
    except SystemExit:
        keep = True  # keep the logs of a failed run
        raise
    finally:
        bench.close(keep, "preimage bench")


def _run(bench: Bench, rounds: int, duration: float, schemes: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    say = print if bench.verbose else (lambda *a, **k: None)
    say("[preimage] starting the upstream, mitmdump and two goex-proxy runs (with and without undo rules)...",
        flush=True)
    bench.setup(only="bare")
    bench.proxies[PRE] = bench._start_goex(PRE, preimage_policy())  # no undo_rules key: every shipped pack
    bench.proxies[NO_UNDO] = bench._start_goex(NO_UNDO, preimage_policy(), "undo_rules: []\n")
    for name in (PRE, NO_UNDO):
        bench._check(bench.proxies[name])
    plans = {scheme: _check_put(bench, scheme) for scheme in schemes}

    runs: dict[tuple[str, str], list[Run]] = {}
    for scheme in schemes:
        say(f"[preimage] {scheme}: warm-up, then {rounds} alternating rounds of {duration:g}s at 1 connection",
            flush=True)
        for _, proxy, request in CASES:
            bench.measure(proxy, scheme, 1, min(duration, 0.5), request)
        for _ in range(rounds):
            for label, proxy, request in CASES:
                runs.setdefault((scheme, label), []).append(bench.measure(proxy, scheme, 1, duration, request))
    return _report(runs, schemes, rounds, duration, plans)


def _report(runs: dict[tuple[str, str], list[Run]], schemes: tuple[str, ...], rounds: int, duration: float,
            plans: dict[str, str]) -> tuple[str, dict[str, Any]]:
    lines = [f"== Pre-image: a PUT through goex-proxy that reads the resource first, vs one that does not, vs one "
             f"upstream round trip (1 connection, sequential, {rounds} alternating rounds x {duration:g}s, medians) =="]
    results: dict[str, Any] = {}
    bad = [f"{scheme} {label}: {r.errors}" for (scheme, label), rs in runs.items() for r in rs if r.errors]
    for scheme in schemes:
        med: dict[str, dict[str, float]] = {}
        rows = []
        for label, proxy, _ in CASES:
            rs = runs[(scheme, label)]
            m = {"p50": median([r.p50_ms for r in rs]), "p99": median([r.p99_ms for r in rs]),
                 "rps": median([r.rps for r in rs]), "cpu": median([r.cpu_us_per_req for r in rs]),
                 "main": median([r.main_thread_cpu_s / r.requests * 1e6 if r.requests else float("nan") for r in rs]),
                 "other": median([r.other_threads_cpu_s / r.requests * 1e6 if r.requests else float("nan")
                                  for r in rs])}
            med[label] = m
            rows.append([label, fmt(m["p50"], 3), fmt(m["p99"], 3), fmt(m["rps"], 0),
                         *((fmt(m["cpu"], 0), fmt(m["main"], 0), fmt(m["other"], 0)) if proxy else ("-",) * 3)])
        direct, bare, no_undo, pre = (med[label] for label, _, _ in CASES)
        per_round = [p.p50_ms - n.p50_ms - d.p50_ms for d, n, p in zip(
            runs[(scheme, CASES[0][0])], runs[(scheme, CASES[2][0])], runs[(scheme, CASES[3][0])], strict=True)]
        over50 = pre["p50"] - no_undo["p50"] - direct["p50"]
        over99 = pre["p99"] - no_undo["p99"] - direct["p99"]
        ok = over50 <= TARGET_MS
        results[scheme] = {"overhead_p50_ms": over50, "overhead_p99_ms": over99, "pass": ok,
                           "preimage_put_p50_ms": pre["p50"], "plain_put_p50_ms": no_undo["p50"],
                           "upstream_get_p50_ms": direct["p50"], "mitmdump_put_p50_ms": bare["p50"],
                           "added_cpu_us": pre["cpu"] - no_undo["cpu"],
                           "added_main_thread_cpu_us": pre["main"] - no_undo["main"]}
        lines += [
            f"{scheme}: undo plan of the recorded PUT: {plans[scheme]}",
            table([f"{scheme} (1 connection)", "p50 ms", "p99 ms", "req/s", "proxy CPU us/req", "main thread",
                   "other threads"], rows),
            "",
            table(["what", "p50 ms", "p99 ms", "per-round p50", "target", "result"], [
                ["overhead = (PUT + pre-image) - (PUT, no rules) - (GET round trip)", signed(over50, 3),
                 signed(over99, 3), f"{min(per_round):+.2f} to {max(per_round):+.2f}", f"p50 <= {TARGET_MS:g}",
                 "PASS" if ok else "FAIL"],
                ["  pre-image PUT - PUT without undo rules", signed(pre["p50"] - no_undo["p50"], 3),
                 signed(pre["p99"] - no_undo["p99"], 3), "", "", ""],
                ["  goex PUT without undo rules - mitmdump PUT", signed(no_undo["p50"] - bare["p50"], 3),
                 signed(no_undo["p99"] - bare["p99"], 3), "", "", ""],
                ["  extra proxy CPU per PUT with the pre-image, us (main thread / others)",
                 f"{signed(pre['cpu'] - no_undo['cpu'], 0)} ({signed(pre['main'] - no_undo['main'], 0)} / "
                 f"{signed(pre['other'] - no_undo['other'], 0)})", "", "", "", ""],
            ]),
            "",
        ]
    lines.append("(The direct GET is the client's own keep-alive connection to the upstream; the proxy's pre-image "
                 "read goes over its pooled upstream connection. The no-rules proxy also skips the undo class of "
                 "each row, so the overhead includes rule matching and classification.)")
    if bad:
        lines.append("Errors during measurement (these runs are suspect): " + "; ".join(bad))
    return "\n".join(lines), results



if __name__ == "__main__":
    _procs = Processes()
    try:
        print(run(_procs)[0])
    finally:
        _procs.stop_all()
