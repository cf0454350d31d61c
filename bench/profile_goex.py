"""Where goex-proxy's per-request time goes: py-spy samples the running proxy while the load generator drives it.

Optional part (`python bench/run.py --only profile`, or `--profile` with the others); needs `py-spy`
(`pip install py-spy`) and permission to ptrace the proxy (root or same user with ptrace allowed).
Only goex-proxy is started here (no bare mitmdump), so the proxy has the machine to itself apart from the upstream
and the client. Samples pause the proxy briefly, so its throughput here is a little lower than in the main table.
"""

from __future__ import annotations

import collections
import functools
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO_DIR, Processes, fmt, table, tool
from throughput import Bench

RATE = 250
#: What the load generator sends: a GET (the throughput bench's), a small JSON POST that the REST undo pack
#: classifies (`create in a collection, answered 200`: exact), a JSON PUT with its pre-image read first.
ITEM = '{"name": "widget 42", "color": "blue", "tags": ["bench"], "count": 43}'
REQUESTS: dict[str, tuple[str, ...]] = {
    "get": (),
    "post": ("--method", "POST", "--path", "/bench/items", "--body", ITEM),
    "put": ("--method", "PUT", "--body", ITEM),
    "post10m": ("--method", "POST", "--path", "/bench/items", "--warmup", "1"),  # 10 MB of JSON, 2 connections
}
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+):(?P<line>\d+)\)$")
OUR_DIRS = ("proxy/", "addons/")
SKIP_OURS = ("proxy/cli/", "proxy/runtime.py", "proxy/__main__.py")  # the outer frames every sample has


def _py_spy() -> str | None:
    try:
        return tool("py-spy")
    except SystemExit:
        return shutil.which("py-spy")


def _frame(text: str) -> tuple[str, str, int] | None:
    m = _FRAME.match(text)
    return (m["func"], _in_repo(m["file"]), int(m["line"])) if m else None


def _in_repo(file: str) -> str:
    """A file of a `goex_proxy` package run from another tree (`PYTHONPATH=DIR`) named as in this repository."""
    if "goex_proxy/" not in file:
        return file
    rest = file.rsplit("goex_proxy/", 1)[1]
    return rest if rest.startswith("addons/") else f"proxy/{rest}"


def _ours(file: str) -> bool:
    return file.startswith(OUR_DIRS) and not file.startswith(SKIP_OURS)


@functools.lru_cache(maxsize=256)
def _source(file: str, line: int) -> str:
    try:
        return (REPO_DIR / file).read_text().splitlines()[line - 1].strip()[:70]
    except (OSError, IndexError):
        return ""


#: Frames that are not a stage of their own: the fail-closed wrapper every hook runs in, and the stages' dispatch.
_WRAPPERS = ("addons/failclosed.py", "addons/stages.py")


def stage_of(frames: list[str]) -> str:
    """Which part of the proxy a main-thread sample is in: the outermost frame of ours below the command line (a
    stage's module and function, e.g. `addons/decide.py Decide.request`), waiting in epoll, or mitmproxy/asyncio."""
    leaf = _frame(frames[-1])
    if leaf and leaf[0].endswith("select") and leaf[1] == "selectors.py":
        return "(idle: waiting in epoll)"
    for f in frames[1:]:
        parsed = _frame(f)
        if parsed and _ours(parsed[1]) and parsed[1] not in _WRAPPERS:
            return f"{parsed[1]} {parsed[0]}"
    return "(mitmproxy, asyncio, ssl: not ours)"


def analyse(raw: Path, requests: int, top: int = 14) -> tuple[str, dict[str, Any]]:
    stages: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    func_incl: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    line_incl: dict[str, collections.Counter[tuple[str, int]]] = collections.defaultdict(collections.Counter)
    ours_any: collections.Counter[str] = collections.Counter()
    idle = 0
    for text in raw.read_text().splitlines():
        stack, _, count = text.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = "audit writer" if "goex-audit-writer" in frames[0] else "anchor closer (in the kernel)" \
            if "goex-anchor-closer" in frames[0] else "main (event loop)" if "MainThread" in frames[0] else "other"
        leaf = _frame(frames[-1])
        if leaf and "queue.get(" in _source(leaf[1], leaf[2]):  # blocked waiting for work: py-spy counts it as busy
            idle += n
            continue
        threads[thread] += n
        if thread == "main (event loop)":
            stages[stage_of(frames)] += n
        seen_f: set[str] = set()
        seen_l: set[tuple[str, int]] = set()
        for f in frames[1:]:
            parsed = _frame(f)
            if not parsed or not _ours(parsed[1]):
                continue
            key = f"{parsed[0]} ({parsed[1]})"
            if key not in seen_f:
                func_incl[thread][key] += n
                seen_f.add(key)
            loc = (parsed[1], parsed[2])
            if loc not in seen_l:
                line_incl[thread][loc] += n
                seen_l.add(loc)
        if seen_f:
            ours_any[thread] += n

    def us(samples: int) -> float:
        return samples / RATE / requests * 1e6 if requests else float("nan")

    out = []
    main_t = "main (event loop)"
    rows = [[t, f"{n:,}", fmt(us(n), 0), f"{ours_any[t] / n * 100:.0f}%" if n else "-", fmt(us(ours_any[t]), 0)]
            for t, n in threads.most_common()]
    out.append(table(["thread (py-spy)", "busy samples", "us/request", "in our code (proxy/, addons/)",
                      "ours us/request"], rows))
    out.append("")
    out.append("Main thread: functions of ours by inclusive time (a stage's time includes what it calls):")
    frows = [[k, f"{n / max(1, threads[main_t]) * 100:.1f}%", fmt(us(n), 1)]
             for k, n in func_incl[main_t].most_common(top)]
    out.append(table(["function (file)", "of main thread", "us/request"], frows))
    out.append("")
    out.append("Main thread by stage (the outermost function of ours in each sample: exclusive between stages):")
    srows = [[k, f"{n / max(1, threads[main_t]) * 100:.1f}%", fmt(us(n), 1)] for k, n in stages.most_common(top + 6)]
    out.append(table(["stage (file function)", "of main thread", "us/request"], srows))
    writer = "audit writer"
    if threads[writer]:
        out.append("")
        out.append("Audit writer thread: lines of ours by inclusive time (sqlite3 releases the GIL while it runs):")
        lrows = [[f"{f}:{ln}", _source(f, ln), f"{n / threads[writer] * 100:.0f}%", fmt(us(n), 1)]
                 for (f, ln), n in line_incl[writer].most_common(8)]
        out.append(table(["line", "source", "of writer thread", "us/request"], lrows))
    if idle:
        out.append(f"({idle:,} samples of threads blocked in queue.get(), waiting for work, are left out.)")
    return "\n".join(out), {"threads": dict(threads), "ours": dict(ours_any),
                            "main_top": func_incl[main_t].most_common(top), "stages": stages.most_common()}


def run(procs: Processes, schemes: tuple[str, ...] = ("https",), duration: float = 6.0, conns: int = 10,
        keep: bool = False, request: str = "get") -> tuple[str, dict[str, Any]]:
    spy = _py_spy()
    if not spy:
        msg = "== Profile: skipped, py-spy is not installed (pip install py-spy) =="
        return msg, {"skipped": "py-spy missing"}
    workdir = Path(tempfile.mkdtemp(prefix="goex-bench-profile-"))
    bench = Bench(procs, workdir, verbose=True)
    texts, results = [], {}
    try:
        from preimage_bench import preimage_policy  # the throughput policy and a rule allowing PUT /bench/items/*

        bench.setup(only="goex", policy_doc=preimage_policy())
        proxy = bench.proxies["goex-proxy"]
        options = REQUESTS[request]
        if request == "post10m":
            from throughput import big_body

            options = (*options, "--body-file", str(big_body(workdir / "body-10m.json")))
            conns = 2
        for scheme in schemes:
            bench.measure("goex-proxy", scheme, conns, 1.0, options)  # warm-up
            raw = workdir / f"py-spy-{scheme}.txt"
            sampler = procs.start([spy, "record", "--pid", str(proxy.proc.pid), "--rate", str(RATE), "--format", "raw",
                                   "--threads", "--duration", str(int(duration + 2)), "-o", str(raw)],
                                  log=workdir / "py-spy.log")
            time.sleep(1.0)  # py-spy attaches
            r = bench.measure("goex-proxy", scheme, conns, duration, options)
            try:
                sampler.wait(timeout=duration + 30)
            except subprocess.TimeoutExpired:
                pass
            procs.stop(sampler)
            if not raw.exists() or raw.stat().st_size == 0:
                log = (workdir / "py-spy.log").read_text(errors="replace")[-600:]
                texts.append(f"== Profile ({scheme}): py-spy recorded nothing (ptrace not permitted?): {log} ==")
                continue
            # py-spy ran ~2 s longer than the load: those samples are idle, so busy samples belong to the load.
            text, res = analyse(raw, r.requests)
            main_us = r.main_thread_cpu_s / r.requests * 1e6 if r.requests else float("nan")
            other_us = r.other_threads_cpu_s / r.requests * 1e6 if r.requests else float("nan")
            res.update(rps=r.rps, requests=r.requests, cpu_us_per_req=r.cpu_us_per_req, main_thread_us=main_us,
                       other_threads_us=other_us,
                       main_thread_util=r.main_thread_cpu_s / r.duration_s)
            results[scheme] = res
            texts.append(
                f"== Profile: goex-proxy under load, {request.upper()} {scheme}, {conns} connections, {duration:g}s, py-spy at {RATE} Hz "
                f"({r.rps:,.0f} req/s while sampled) ==\n"
                f"Proxy CPU per request (from /proc): main thread (event loop) {fmt(main_us, 0)} us, other threads "
                f"(audit writer, ...) {fmt(other_us, 0)} us; the main thread was busy "
                f"{r.main_thread_cpu_s / r.duration_s * 100:.0f}% of the time (it is the bottleneck when near 100%).\n"
                + text)
    finally:
        bench.close(keep, "profile")
    return "\n\n".join(texts), results


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="Profile goex-proxy under load with py-spy (one kind of request).")
    p.add_argument("--request", choices=sorted(REQUESTS), default="get")
    p.add_argument("--scheme", default="http", help="http, https or http,https")
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--top", type=int, default=14)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (the raw py-spy samples)")
    args = p.parse_args()
    procs = Processes()
    try:
        text, _ = run(procs, tuple(args.scheme.split(",")), args.duration, args.conns, args.keep, args.request)
    finally:
        procs.stop_all()
    print(text)


if __name__ == "__main__":
    main()
