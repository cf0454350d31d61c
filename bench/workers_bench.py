"""`goex-proxy run --workers 2` against `run --workers 1` and one bare mitmdump, side by side: plain HTTP and HTTPS
GETs through keep-alive connections, alternating rounds, medians and per-round ratios (issue 20's goal: two workers
at least 1.6x one bare mitmdump on a 2-core machine). The load generator and the upstream share the cores.

    python bench/run.py --only workers
    python bench/workers_bench.py --compare-tree DIR   # also `run --workers 2` from DIR's `goex_proxy`, side by side
"""

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
        keep: bool = False, compare: Path | None = None) -> tuple[str, dict[str, Any]]:
    """With `compare` (a directory holding another `goex_proxy` package), also its `run --workers 2`."""
    bench = Bench(procs, Path(tempfile.mkdtemp(prefix="goex-bench-workers-")), verbose=verbose)
    say = print if verbose else (lambda *a, **k: None)
    names = NAMES + (("before x2",) if compare is not None else ())
    try:
        bench.setup()
        bench.proxies["goex-proxy x2"] = bench._start_goex("goex-x2", workers=2)
        bench._check(bench.proxies["goex-proxy x2"])
        if compare is not None:
            os.environ["PYTHONPATH"] = str(compare)
            try:
                bench.proxies["before x2"] = bench._start_goex("before-x2", workers=2)
            finally:
                del os.environ["PYTHONPATH"]
            bench._check(bench.proxies["before x2"])
        runs: dict[tuple[str, str], list[float]] = {}
        busy: dict[tuple[str, str], list[float]] = {}
        for scheme in ("http", "https"):
            say(f"[workers] {scheme}: warm-up, then {rounds} alternating rounds of {duration:g}s at {conns} "
                "connections", flush=True)
            for name in names:
                bench.measure(name, scheme, conns, min(duration, 1.0))
            for i in range(rounds):
                at = i % len(names)
                for name in names[at:] + names[:at]:  # each takes each place in the order
                    got = bench.measure(name, scheme, conns, duration)
                    runs.setdefault((name, scheme), []).append(got.rps)
                    busy.setdefault((name, scheme), []).append(got.cores_busy)
    except SystemExit:
        keep = True
        raise
    finally:
        bench.close(keep)
    rows, results = [], {}
    for scheme in ("http", "https"):
        rps = {name: runs[(name, scheme)] for name in names}
        per = [x2 / bare for x2, bare in zip(rps["goex-proxy x2"], rps["mitmdump"], strict=True)]
        one = [x1 / bare for x1, bare in zip(rps["goex-proxy"], rps["mitmdump"], strict=True)]
        two_one = [x2 / x1 for x2, x1 in zip(rps["goex-proxy x2"], rps["goex-proxy"], strict=True)]
        ratio = median(per)
        before = [b / bare for b, bare in zip(rps.get("before x2", ()), rps["mitmdump"], strict=False)]
        cores = {name: median(busy[(name, scheme)]) for name in names}
        results[scheme] = {"x2_over_bare": ratio, "x1_over_bare": median(one), "x2_over_x1": median(two_one),
                           "rps": {n: median(v) for n, v in rps.items()}, "cores_busy": cores,
                           "pass": ratio >= TARGET}
        if before:
            results[scheme]["before_x2_over_bare"] = median(before)
        rows.append([scheme, *(f"{median(rps[n]):,.0f}" for n in NAMES), f"{median(one):.2f}", f"{ratio:.2f}",
                     ", ".join(f"{r:.2f}" for r in per), f"{median(two_one):.2f}",
                     *([f"{median(before):.2f}"] if before else []),
                     " / ".join(f"{cores[n]:.2f}" for n in NAMES), f">= {TARGET}", "PASS" if ratio >= TARGET else "FAIL"])
    text = "\n".join([
        f"== Workers: goex-proxy run --workers 2 vs --workers 1 vs bare mitmdump ({conns} keep-alive connections, "
        f"{rounds} rotating rounds x {duration:g}s, medians; {os.cpu_count()} cores shared with the upstream and the "
        "load generator) ==",
        table(["scheme", "mitmdump req/s", "goex x1 req/s", "goex x2 req/s", "x1/bare", "x2/bare", "x2/bare per round",
               "x2/x1", *(["before x2/bare"] if compare is not None else []), "cores busy (bare / x1 / x2)", "goal",
               "result"], rows),
        "cores busy: the CPU time of the proxy (all its processes), the upstream and the load generator over a round's "
        "length, medians: how much of the machine the three took."])
    return text, results


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--compare-tree", type=Path, help="a directory holding another `goex_proxy` package")
    args = p.parse_args()
    procs = Processes()
    try:
        print(run(procs, rounds=args.rounds, duration=args.duration, conns=args.conns, compare=args.compare_tree)[0])
    finally:
        procs.stop_all()
