"""`goex-proxy run --workers 2` against `run --workers 1` and one bare mitmdump, side by side: plain HTTP and HTTPS
GETs through keep-alive connections, alternating rounds, medians and per-round ratios (issue 20's goal: two workers
at least 1.6x one bare mitmdump on a 2-core machine). The load generator and the upstream share the cores."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from common import Processes, median, table
from throughput import Bench

TARGET = 1.6
NAMES = ("mitmdump", "goex-proxy", "goex-proxy x2")


def run(procs: Processes, *, rounds: int, duration: float, conns: int, verbose: bool = True,
        keep: bool = False) -> tuple[str, dict[str, Any]]:
    bench = Bench(procs, Path(tempfile.mkdtemp(prefix="goex-bench-workers-")), verbose=verbose)
    say = print if verbose else (lambda *a, **k: None)
    try:
        bench.setup()
        bench.proxies["goex-proxy x2"] = bench._start_goex("goex-x2", workers=2)
        bench._check(bench.proxies["goex-proxy x2"])
        runs: dict[tuple[str, str], list[float]] = {}
        for scheme in ("http", "https"):
            say(f"[workers] {scheme}: warm-up, then {rounds} alternating rounds of {duration:g}s at {conns} "
                "connections", flush=True)
            for name in NAMES:
                bench.measure(name, scheme, conns, min(duration, 1.0))
            for i in range(rounds):
                for name in NAMES[i % 3:] + NAMES[:i % 3]:  # each takes each place in the order
                    runs.setdefault((name, scheme), []).append(bench.measure(name, scheme, conns, duration).rps)
    except SystemExit:
        keep = True
        raise
    finally:
        bench.close(keep)
    rows, results = [], {}
    for scheme in ("http", "https"):
        rps = {name: runs[(name, scheme)] for name in NAMES}
        per = [x2 / bare for x2, bare in zip(rps["goex-proxy x2"], rps["mitmdump"], strict=True)]
        one = [x1 / bare for x1, bare in zip(rps["goex-proxy"], rps["mitmdump"], strict=True)]
        two_one = [x2 / x1 for x2, x1 in zip(rps["goex-proxy x2"], rps["goex-proxy"], strict=True)]
        ratio = median(per)
        results[scheme] = {"x2_over_bare": ratio, "x1_over_bare": median(one), "x2_over_x1": median(two_one),
                           "rps": {n: median(v) for n, v in rps.items()}, "pass": ratio >= TARGET}
        rows.append([scheme, *(f"{median(rps[n]):,.0f}" for n in NAMES), f"{median(one):.2f}", f"{ratio:.2f}",
                     ", ".join(f"{r:.2f}" for r in per), f"{median(two_one):.2f}", f">= {TARGET}",
                     "PASS" if ratio >= TARGET else "FAIL"])
    text = "\n".join([
        f"== Workers: goex-proxy run --workers 2 vs --workers 1 vs bare mitmdump ({conns} keep-alive connections, "
        f"{rounds} rotating rounds x {duration:g}s, medians; {os.cpu_count()} cores shared with the upstream and the "
        "load generator) ==",
        table(["scheme", "mitmdump req/s", "goex x1 req/s", "goex x2 req/s", "x1/bare", "x2/bare", "x2/bare per round",
               "x2/x1", "goal", "result"], rows)])
    return text, results
