#!/usr/bin/env python3
"""goex-proxy benchmark suite: throughput vs bare mitmdump, policy decision latency, audit log query time, undo
planning time, the latency a pre-image read adds to a mutating call, what `review:` adds to one, peak memory under
decompression bombs and how long a hostile path holds the event loop, and (optional) what the jail adds to starting a
command and how fast a jailed run's file changes are kept and undone.

    python bench/run.py                    # everything (~11 minutes)
    python bench/run.py --quick            # shorter runs, same measurements (~3 minutes)
    python bench/run.py --only decide      # one part: throughput | decide | scale | log | undoplan | preimage | review | dos | console
                                           # (comma-separated for several; `undo` is undoplan,preimage)
    python bench/run.py --only jail        # optional: jailed vs --no-jail exec start, keep/undo of 1,000 files (~2 min)
    python bench/run.py --only scrub       # optional: scrubbing echoes of 0-1,000 secrets, alone and end to end (~4 min)
    python bench/run.py --only workers     # optional: run --workers 2 vs --workers 1 vs bare mitmdump (~3 minutes)
    python bench/run.py --only audit-size  # optional: audit bytes/row, old layout vs new, 1M rows (--log-rows for 10M)
    python bench/run.py --only dbcapture   # optional: what row capture for SQL undo costs (PostgreSQL; ~2 min)
    python bench/run.py --only throughput --rounds 7 --duration 8

Everything it needs (upstream server, both proxies, load generator) is started on 127.0.0.1 with free ports and
stopped again, also on Ctrl-C. It exits 0 after printing the tables whether or not a target is met (use --strict
to exit 1 when one is missed); it exits 2 when it cannot measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, Processes  # noqa: E402

PARTS = ("throughput", "decide", "scale", "log", "undoplan", "preimage", "review", "dos", "console")
OPTIONAL_PARTS = ("profile", "jail", "workers", "scrub", "audit-size", "dbcapture")
ALIASES = {"undo": ("undoplan", "preimage")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PARTS),
                   help="comma-separated parts to run: throughput, decide, log, undoplan, preimage (undo: both), "
                        "review, dos, profile, jail (default: all but profile and jail)")
    p.add_argument("--profile", action="store_true",
                   help="also profile goex-proxy under load with py-spy (the `profile` part; needs py-spy)")
    p.add_argument("--profile-scheme", default="https", help="scheme(s) to profile: http, https or http,https")
    p.add_argument("--quick", action="store_true", help="shorter runs (about 3 minutes in all)")
    p.add_argument("--duration", type=float, help="seconds per throughput run (default 5; quick 1.5)")
    p.add_argument("--rounds", type=int, help="alternating rounds per proxy and scheme (default 5; quick 3)")
    p.add_argument("--conns", type=int, default=10, help="concurrent keep-alive connections (default 10)")
    p.add_argument("--no-latency", action="store_true", help="skip the 1-connection latency rounds")
    p.add_argument("--loadgen", choices=["python", "hey"], default="python",
                   help="load generator: bench/loadgen.py (default) or `hey` (Debian package) as a cross-check")
    p.add_argument("--decide-calls", type=int, help="decide() calls per round (default 60000; quick 20000)")
    p.add_argument("--log-rows", type=int, default=1_000_000, help="audit rows for the log and undoplan benchmarks")
    p.add_argument("--regenerate", action="store_true", help="rebuild the cached audit database")
    p.add_argument("--undo-ids", type=int, help="request ids to plan the undo of (default 2000; quick 500)")
    p.add_argument("--jail-rounds", type=int, help="interleaved exec start rounds of the jail part (default 20; quick "
                        "10); its file-change rounds are a quarter of that, at least 3")
    p.add_argument("--preimage-scheme", default="https", help="scheme(s) of the pre-image part: http, https or http,https")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs, audit.db)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the result tables")
    args = p.parse_args(argv)
    args.parts = [y for x in args.only.split(",") if x.strip() for y in ALIASES.get(x.strip(), (x.strip(),))]
    if args.profile and "profile" not in args.parts:
        args.parts.append("profile")
    bad = [x for x in args.parts if x not in PARTS + OPTIONAL_PARTS]
    if bad:
        p.error(f"--only: unknown part(s) {', '.join(bad)} (choose from {', '.join(PARTS + OPTIONAL_PARTS)}, undo)")
    args.profile_schemes = tuple(x.strip() for x in args.profile_scheme.split(",") if x.strip())
    if not args.profile_schemes or any(x not in ("http", "https") for x in args.profile_schemes):
        p.error("--profile-scheme: http, https or http,https")
    args.duration = args.duration or (1.5 if args.quick else 5.0)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.decide_calls = args.decide_calls or (20_000 if args.quick else 60_000)
    args.undo_ids = args.undo_ids or (500 if args.quick else 2000)
    args.jail_rounds = args.jail_rounds or (10 if args.quick else 20)
    args.preimage_schemes = tuple(x.strip() for x in args.preimage_scheme.split(",") if x.strip())
    if not args.preimage_schemes or any(x not in ("http", "https") for x in args.preimage_schemes):
        p.error("--preimage-scheme: http, https or http,https")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs = Processes()

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGINT too: a shell may start us ignoring it
        signal.signal(sig, on_signal)
    say = (lambda *a, **k: None) if args.quiet else print
    started = time.monotonic()
    sections: list[str] = []
    results: dict[str, Any] = {}
    try:
        try:
            import goex_proxy  # noqa: F401
        except ImportError:
            print(f"bench: goex_proxy is not importable with {PYTHON}; run with the project's venv python",
                  file=sys.stderr)
            return 2
        if "decide" in args.parts:
            import decide_bench

            say("[decide] timing decide() over 100 rules...", flush=True)
            text, results["decide"] = decide_bench.run(calls=args.decide_calls, rounds=3 if args.quick else 5)
            sections.append(text)
            print(text + "\n", flush=True)
        if "scale" in args.parts:
            import decide_bench

            say("[scale] loading and deciding with 10 to 10,000 rules on one host...", flush=True)
            text, results["scale"] = decide_bench.run_scale(calls=1000 if args.quick else 3000)
            sections.append(text)
            print(text + "\n", flush=True)
        if "log" in args.parts:
            import log_bench

            text, results["log"] = log_bench.run(rows=args.log_rows, cli_runs=5 if args.quick else 9,
                                                 query_runs=20 if args.quick else 50, regenerate=args.regenerate,
                                                 say=say)
            sections.append(text)
            print(text + "\n", flush=True)
        if "audit-size" in args.parts:
            import audit_size_bench

            text, results["audit-size"] = audit_size_bench.run(rows=args.log_rows, plans=200 if args.quick else 500,
                                                               cli_runs=5 if args.quick else 7,
                                                               regenerate=args.regenerate, say=say)
            sections.append(text)
            print(text + "\n", flush=True)
        if "undoplan" in args.parts:
            import undo_bench

            text, results["undoplan"] = undo_bench.run(rows=args.log_rows, ids=args.undo_ids,
                                                       cli_runs=5 if args.quick else 9, regenerate=args.regenerate
                                                       and "log" not in args.parts, say=say)
            sections.append(text)
            print(text + "\n", flush=True)
        if "throughput" in args.parts:
            import throughput

            text, results["throughput"] = throughput.run(
                procs, rounds=args.rounds, duration=args.duration, conns=args.conns,
                latency_rounds=0 if args.no_latency else args.rounds,
                latency_duration=max(1.0, args.duration / 2), loadgen=args.loadgen, verbose=not args.quiet,
                keep=args.keep)
            sections.append(text)
            print(text + "\n", flush=True)
        if "scrub" in args.parts:
            import scrub_bench

            text, results["scrub"] = scrub_bench.run_all(procs, quick=args.quick, rounds=args.rounds, say=say,
                                                         keep=args.keep)
            sections.append(text)
            print(text + "\n", flush=True)
        if "workers" in args.parts:
            import workers_bench

            text, results["workers"] = workers_bench.run(procs, rounds=args.rounds, duration=args.duration,
                                                         conns=args.conns, verbose=not args.quiet, keep=args.keep)
            sections.append(text)
            print(text + "\n", flush=True)
        if "preimage" in args.parts:
            import preimage_bench

            text, results["preimage"] = preimage_bench.run(procs, rounds=args.rounds, duration=0.75 if args.quick
                                                           else 1.5, schemes=args.preimage_schemes,
                                                           verbose=not args.quiet, keep=args.keep)
            sections.append(text)
            print(text + "\n", flush=True)
        if "review" in args.parts:
            import review_bench

            text, results["review"] = review_bench.run(procs, rounds=args.rounds, duration=args.duration,
                                                       conns=args.conns, micro_calls=500 if args.quick else 2000,
                                                       verbose=not args.quiet, keep=args.keep)
            sections.append(text)
            print(text + "\n", flush=True)
        if "dos" in args.parts:
            import dos_bench

            text, results["dos"] = dos_bench.run(procs, rounds=3 if args.quick else 5, window=1.0 if args.quick
                                                 else 1.5, say=say, keep=args.keep)
            sections.append(text)
            print(text + "\n", flush=True)
        if "console" in args.parts:
            import console_bench

            text, results["console"] = console_bench.run(procs, runs=7 if args.quick else 15, rounds=args.rounds,
                                                         duration=args.duration, conns=args.conns,
                                                         verbose=not args.quiet, keep=args.keep)
            sections.append(text)
            print(text + "\n", flush=True)
        if "jail" in args.parts:
            import jail_bench

            text, results["jail"] = jail_bench.run(procs, rounds=args.jail_rounds,
                                                   files_rounds=max(3, args.jail_rounds // 4), say=say, keep=args.keep)
            sections.append(text)
            print(text + "\n", flush=True)
        if "dbcapture" in args.parts:
            import db_capture_bench

            text, results["dbcapture"] = db_capture_bench.run(procs, rounds=args.rounds,
                                                              statements=200 if args.quick else 500, say=say)
            sections.append(text)
            print(text + "\n", flush=True)
        if "profile" in args.parts:
            import profile_goex

            say("[profile] sampling goex-proxy under load with py-spy...", flush=True)
            text, results["profile"] = profile_goex.run(procs, schemes=args.profile_schemes,
                                                        duration=3.0 if args.quick else 6.0, conns=args.conns,
                                                        keep=args.keep)
            sections.append(text)
            print(text + "\n", flush=True)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        return 130
    except SystemExit as exc:  # a part could not measure (its message says why)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise
    finally:
        procs.stop_all()

    elapsed = time.monotonic() - started
    print("=" * 100)
    command = " ".join(["python bench/run.py", *sys.argv[1:]])
    print(f"goex-proxy benchmark summary ({platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} cores, took {elapsed:.0f}s; command: {command})")
    print(summary(results))
    print("=" * 100)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    missed = [k for k, ok in passes(results).items() if not ok]
    return 1 if args.strict and missed else 0


def passes(results: dict[str, Any]) -> dict[str, bool]:
    out = {}
    for scheme, r in results.get("throughput", {}).items():
        out[f"throughput {scheme}"] = r["pass"]
    if "decide" in results:
        out["decide p99"] = results["decide"]["pass"]
    if "scale" in results:
        out["decide and load at scale"] = results["scale"]["pass"]
    if "log" in results:
        out["log CLI"] = results["log"]["pass_cli"]
        out["log query"] = results["log"]["pass_query"]
    if "undoplan" in results:
        out["undo plan"] = results["undoplan"]["pass"]
    if "audit-size" in results:
        out["audit bytes per row"] = results["audit-size"]["pass_size"]
    for scheme, r in results.get("preimage", {}).items():
        out[f"pre-image overhead {scheme}"] = r["pass"]
    for kind, r in review_kinds(results):
        out[f"review pass path {kind}"] = r["within_noise"]
    if "dos" in results:
        out["bomb peak RSS"] = results["dos"]["bomb_pass"]
        out["plain body peak RSS"] = results["dos"]["plain_pass"]
        out["hostile path stall"] = results["dos"]["stall_pass"]
    if "console" in results:
        out["console log page TTFB"] = results["console"]["ttfb"]["pass"]
        out["console streaming throughput"] = results["console"]["streaming"]["within_noise"]
    if "jail" in results:
        out["jail start"] = results["jail"]["start_pass"]
        out["files undo"] = results["jail"]["files"]["pass"]
    return out


def summary(results: dict[str, Any]) -> str:
    from common import table

    rows = []
    for scheme, r in results.get("throughput", {}).items():
        rows.append([f"throughput {scheme}: goex/bare req/s", f"{r['ratio']:.3f} ({r['goex_rps']:,.0f} / "
                     f"{r['bare_rps']:,.0f})", ">= 0.90", "PASS" if r["pass"] else "FAIL"])
        rows.append([f"  added latency {scheme} p50 / p99 (10 conns)",
                     f"{r['added_p50_ms']:+.2f} / {r['added_p99_ms']:+.2f} ms", "", ""])
        if r["added_p50_1conn_ms"] == r["added_p50_1conn_ms"]:  # not NaN: the 1-connection rounds ran
            rows.append([f"  added latency {scheme} p50 / p99 (1 conn)",
                         f"{r['added_p50_1conn_ms']:+.3f} / {r['added_p99_1conn_ms']:+.3f} ms", "", ""])
    if "decide" in results:
        d = results["decide"]
        rows.append([f"decide() over {d['rules']} rules p50 / p99", f"{d['p50_us']:.1f} / {d['p99_us']:.1f} us",
                     "p99 <= 50 us", "PASS" if d["pass"] else "FAIL"])
    for n, r in results.get("scale", {}).get("sizes", {}).items():
        if n in (100, 10_000):
            goal = "p99 <= 50 us" if n == 100 else "load <= 1 s, p99 <= 100 us"
            rows.append([f"{n:,} rules on one host: load, worst own p99 (wall p99)", f"{r['load_s'] * 1e3:,.0f} ms, "
                         f"{r['worst_p99_us']:.1f} us ({r['worst_wall_p99_us']:.1f})", goal,
                         "PASS" if r["pass"] else "FAIL"])
    if "audit-size" in results:
        sz = results["audit-size"]
        rows.append([f"audit log bytes per row, {sz['new']['rows']:,} rows (old layout -> new)",
                     f"{sz['old']['bytes_per_row']:,.0f} -> {sz['new']['bytes_per_row']:,.0f}", "<= 400",
                     "PASS" if sz["pass_size"] else "FAIL"])
    if "log" in results:
        lg = results["log"]
        rows.append(["goex-proxy log --agent X --since 1h (CLI)", f"{lg['cli_ms']:.0f} ms", "<= 100 ms",
                     "PASS" if lg["pass_cli"] else "FAIL"])
        rows.append(["  audit.query() in-process", f"{lg['query_ms']:.2f} ms", "<= 100 ms",
                     "PASS" if lg["pass_query"] else "FAIL"])
        rows.append(["  interpreter start / import goex_proxy.cli",
                     f"{lg['python_floor_ms']:.0f} / {lg['import_ms']:.0f} ms", "", ""])
    if "undoplan" in results:
        u = results["undoplan"]
        rows.append([f"undo plan, 1 of {u['ids']:,} ids (get + plan) p50 / p99", f"{u['p50_ms']:.2f} / {u['p99_ms']:.2f} ms",
                     "p99 <= 20 ms", "PASS" if u["pass"] else "FAIL"])
        rows.append(["  CLI: undo ID --dry-run --json / log --since 1h",
                     f"{u['cli_undo_ms']:.0f} / {u['cli_log_ms']:.0f} ms", "", ""])
    for scheme, r in results.get("preimage", {}).items():
        rows.append([f"pre-image PUT overhead {scheme} p50 / p99 (1 conn)",
                     f"{r['overhead_p50_ms']:+.2f} / {r['overhead_p99_ms']:+.2f} ms", "p50 <= 2 ms",
                     "PASS" if r["pass"] else "FAIL"])
        rows.append(["  PUT + pre-image / PUT, no rules / GET upstream p50",
                     f"{r['preimage_put_p50_ms']:.2f} / {r['plain_put_p50_ms']:.2f} / {r['upstream_get_p50_ms']:.2f} ms",
                     "", ""])
    rows += review_rows(results)
    if "dos" in results:
        rows += dos_rows(results["dos"])
    if "console" in results:
        c = results["console"]
        worst = max(c["ttfb"]["filters"].items(), key=lambda kv: kv[1]["p50_ms"])
        rows.append([f"console log page TTFB, 1M rows, worst filter p50 / p95 ({worst[0]})",
                     f"{worst[1]['p50_ms']:.0f} / {worst[1]['p95_ms']:.0f} ms", "<= 200 ms",
                     "PASS" if c["ttfb"]["pass"] else "FAIL"])
        s_ = c["streaming"]
        rows.append(["throughput, console streaming / idle req/s", f"{s_['ratio']:.3f} (noise {s_['noise']:.0%})",
                     "within noise", "PASS" if s_["within_noise"] else "FAIL"])
        rows.append(["  with / without the console's indexes req/s", f"{s_['index_ratio']:.3f}", "", ""])
    if "jail" in results:
        j = results["jail"]
        rows.append(["exec -- true, jailed minus --no-jail (proxy running)",
                     f"{j['added_ms']:+.0f} ms ({j['ratio']:.2f}x)", "<= 150 ms",
                     "PASS" if j["start_pass"] else "FAIL"])
        rows.append(["  exec --no-jail / jailed / jailed, no proxy",
                     f"{j['plain_ms']:.0f} / {j['jail_ms']:.0f} / {j['jail_no_proxy_ms']:.0f} ms", "", ""])
        f = j["files"]
        rows.append([f"runs.undo of {f['files']:,} files added / edited", f"{f['added']['undo_ms']:.0f} / "
                     f"{f['edited']['undo_ms']:.0f} ms", "<= 1000 ms", "PASS" if f["pass"] else "FAIL"])
        rows.append(["  read_layer / keep / CLI files undo, added", f"{f['added']['read_layer_ms']:.0f} / "
                     f"{f['added']['keep_ms']:.0f} / {f['added']['cli_undo_ms']:.0f} ms", "", ""])
        rows.append(["  read_layer / keep / CLI files undo, edited", f"{f['edited']['read_layer_ms']:.0f} / "
                     f"{f['edited']['keep_ms']:.0f} / {f['edited']['cli_undo_ms']:.0f} ms", "", ""])
    return table(["target", "measured (medians)", "target", "result"], rows)


def review_kinds(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The review part's results by kind of request (vendor, rest)."""
    return [(k, r) for k, r in results.get("review", {}).items() if isinstance(r, dict) and "within_noise" in r]


def review_rows(results: dict[str, Any]) -> list[list[str]]:
    """Per kind of POST: goex with `review:` over goex without, both over bare, and expected_class() alone."""
    rows = []
    for kind, r in review_kinds(results):
        rows.append([f"review: all pass, POST {kind}: (b)/(a) req/s", f"{r['b_over_a']:.3f} (cost {r['cost']:.0%}, "
                     f"noise {r['noise']:.0%})", "within noise", "PASS" if r["within_noise"] else "FAIL"])
        rows.append(["  (a)/bare, (b)/bare req/s; (b) slower in", f"{r['a_ratio']:.3f}, {r['b_ratio']:.3f}; "
                     f"{r['rounds_b_slower']} of {len(r['b_over_a_rounds'])} rounds", "", ""])
        rows.append([f"  expected_class() {kind} p50 / p99; main thread (b)-(a)",
                     f"{r['expected_class_p50_us']:.0f} / {r['expected_class_p99_us']:.0f} us; "
                     f"{r['added_main_us']:+.0f} us/req", "", ""])
    return rows


def dos_rows(d: dict[str, Any]) -> list[list[str]]:
    worst = max((r for r in d["memory"] if r["bomb"]), key=lambda r: r["growth_mib"])
    rows = [[f"decompression bombs: worst peak RSS growth ({worst['case']})", f"+{worst['growth_mib']:.0f} MiB",
             "<= +300 MiB", "PASS" if d["bomb_pass"] else "FAIL"]]
    if d["plain"]:
        p = d["plain"]
        rows.append([f"plain {p['wire_bytes'] >> 20} MiB body: peak RSS growth (status {p['status']})",
                     f"+{p['growth_mib']:,.0f} MiB ({p['ratio']:.1f}x)", "<= 2x body",
                     "PASS" if d["plain_pass"] else "FAIL"])
    s = d["stall"]
    rows.append(["hostile paths: steady client's max added latency", f"+{s['added_max_ms']:.0f} ms", "<= 100 ms",
                 "PASS" if s["pass"] else "FAIL"])
    longest = max(s["hostile"], key=lambda h: h["path_bytes"])
    rows.append([f"  steady p50 quiet / under attack; hostile {longest['path_bytes'] // 1000} KB path p50",
                 f"{s['quiet']['p50']:.1f} / {s['attack']['p50']:.1f}; {longest['p50_ms']:.0f} ms", "", ""])
    return rows


if __name__ == "__main__":
    sys.exit(main())
