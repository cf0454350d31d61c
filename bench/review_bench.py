"""Issue 18's benchmark: what `review:` adds to an allowed mutating request that passes (goal: within noise).

With a `review:` map, the gate stage classifies every allowed mutating request before it is sent
(`goex_proxy.undo.plan.expected_class` over the undo packs) and queues one whose class says `pass` for review (an
insert into `approvals` through the audit writer, after its response). Without `review:` the gate skips all of it.

Real parts as throughput.py starts them (its Bench), side by side in one run: the bench upstream, bare mitmdump and
two `goex-proxy run`s with the same throughput policy, (a) as it is and (b) with `review: {exact: pass,
needs-preimage: pass, lossy: pass, irreversible: pass}` (nothing waits; every POST is classified and queued). Two
POSTs with a small JSON body, plain HTTP, keep-alive connections, closed loop:

    vendor  POST http://slack.com/api/chat.postMessage   the Slack pack's rules match it (class exact)
    rest    POST http://127.0.0.1:PORT/bench/items        only the REST pack's `hosts: ["**"]` rules may match it

slack.com goes to the bench upstream (goex: `upstream.routes`; mitmdump: `map_remote`). Rounds alternate bare,
(a), (b), the order rotating by round; every number is a median of rounds. Then `expected_class` alone, in-process,
over the shipped packs, for the same two requests, and where its time goes.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from common import Processes, fmt, median, percentile, signed, table
from policies_gen import throughput_policy
from throughput import Bench, Run
from upstream_server import BODY as UPSTREAM_BODY

from goex_proxy.audit import layout

T = TypeVar("T")
SCHEME = "http"  # the classification is CPU per request whatever the scheme; TLS would only dilute it
REVIEW_ALL = {"exact": "pass", "needs-preimage": "pass", "lossy": "pass", "irreversible": "pass"}
BARE, PLAIN, REVIEW = "mitmdump", "goex-noreview", "goex-review"
PROXIES = (BARE, PLAIN, REVIEW)
LABELS = {BARE: "bare mitmdump", PLAIN: "(a) goex, no review:", REVIEW: "(b) goex, review: all pass"}
VENDOR_HOST = "slack.com"
#: kind: (what it is, host (None: the upstream's 127.0.0.1), path, JSON body)
KINDS: dict[str, tuple[str, str | None, str, dict[str, Any]]] = {
    "vendor": ("POST slack.com/api/chat.postMessage (Slack pack)", VENDOR_HOST, "/api/chat.postMessage",
               {"channel": "C0BENCH", "text": "build 412 passed"}),
    "rest": ("POST 127.0.0.1/bench/items (REST pack only)", None, "/bench/items",
             {"name": "widget 42", "color": "blue", "tags": ["bench"], "count": 43}),
}


def review_policy(review: bool) -> dict[str, Any]:
    """The throughput policy (its POST rules allow both requests), with `review:` all pass if asked."""
    doc = throughput_policy("127.0.0.1")
    if review:
        doc["name"] = "bench-review"
        doc["review"] = REVIEW_ALL
    return doc


def request_options(kind: str) -> list[str]:
    """loadgen.py options for one kind of POST."""
    _, host, path, body = KINDS[kind]
    where = ["--host", host, "--target-port", "80"] if host else []
    return ["--method", "POST", "--path", path, "--body", json.dumps(body), *where]


def _read(db: Path, work: Callable[[sqlite3.Connection], T], timeout: float = 5.0) -> T:
    """`work` on a read-only connection to a proxy's audit database (retried while the writer holds it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                return work(conn)
            finally:
                conn.close()
        except sqlite3.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _rows(db: Path, sql: str, timeout: float = 5.0) -> list[tuple[Any, ...]]:
    """A read-only query of a proxy's audit database (retried while the writer holds it)."""
    return _read(db, lambda conn: conn.execute(sql).fetchall(), timeout)


def _counts(db: Path) -> tuple[int, int]:
    """(POST rows, review-queue rows) once the audit writer has caught up (two equal reads 0.3 s apart)."""
    sql = ("SELECT (SELECT count(*) FROM requests WHERE method = 'POST'), "
           "(SELECT count(*) FROM approvals WHERE kind = 'review')")
    last = (-1, -1)
    for _ in range(30):
        posts, queued = _rows(db, sql)[0]
        if (posts, queued) == last:
            break
        last = (int(posts), int(queued))
        time.sleep(0.3)
    return last


def _queued(db: Path) -> dict[str, str]:
    """The review queue by request URL: its undo class(es) and state(s). Each entry's row is read as written
    (`layout.read`, by `layout.id_term`): a row keeps its id as 8 bytes (no SQL join on the entry's id finds it)
    and may leave its URL to its parts."""
    def work(conn: sqlite3.Connection) -> dict[str, str]:
        out: dict[str, list[str]] = {}
        for request_id, undo_class, state in conn.execute(
                "SELECT request_id, undo_class, state FROM approvals WHERE kind = 'review' ORDER BY ts, request_id"):
            term, forms = layout.id_term(str(request_id))
            row = next(layout.read(conn, f"SELECT scheme, host, port, path, url FROM requests WHERE {term}", forms),
                       None)
            if row is not None and (kind := f"{undo_class} ({state})") not in out.setdefault(str(row["url"]), []):
                out[str(row["url"])].append(kind)
        return {url: ", ".join(v) for url, v in out.items()}
    return _read(db, work)


def _check(bench: Bench) -> dict[str, str]:
    """A few POSTs of each kind through each proxy, all answered 2xx; (b) queued each with its class, (a) none."""
    for kind in KINDS:
        for name in PROXIES:
            r = bench.measure(name, SCHEME, 1, 0.3, request_options(kind))
            if r.errors or not r.requests:
                raise SystemExit(f"bench review: {name} did not pass {KINDS[kind][0]}: {r.errors or 'no response'}")
    home = {name: bench.dir / f"{name}-home" / "audit.db" for name in (PLAIN, REVIEW)}
    _counts(home[REVIEW])
    queued = _queued(home[REVIEW])
    by_kind = {kind: next((v for url, v in queued.items() if KINDS[kind][2] in url), "") for kind in KINDS}
    if not all(by_kind.values()):
        raise SystemExit(f"bench review: {REVIEW} did not queue both POSTs for review: {queued}")
    if _queued(home[PLAIN]):
        raise SystemExit(f"bench review: {PLAIN} queued requests for review without `review:`")
    return by_kind


def _start(bench: Bench) -> None:
    """Upstream and bare mitmdump (with slack.com routed), then the two goex-proxy runs."""
    bench.routed_hosts = (VENDOR_HOST,)
    bench.setup(only="bare")
    bench.proxies[PLAIN] = bench._start_goex(PLAIN, review_policy(False))
    bench.proxies[REVIEW] = bench._start_goex(REVIEW, review_policy(True))
    for name in (PLAIN, REVIEW):
        bench._check(bench.proxies[name])


def _measure(bench: Bench, rounds: int, duration: float, conns: int) -> dict[str, dict[str, list[Run]]]:
    """Per kind: a warm-up run each, then rounds of bare, (a), (b), the order rotating by round."""
    say = print if bench.verbose else (lambda *a, **k: None)
    runs: dict[str, dict[str, list[Run]]] = {kind: {name: [] for name in PROXIES} for kind in KINDS}
    for kind, (what, *_) in KINDS.items():
        say(f"[review] {what}: warm-up, then {rounds} rotating rounds of {duration:g}s at {conns} connections",
            flush=True)
        for name in PROXIES:
            bench.measure(name, SCHEME, conns, min(duration, 1.0), request_options(kind))
        for i in range(rounds):
            for name in PROXIES[i % 3:] + PROXIES[:i % 3]:
                runs[kind][name].append(bench.measure(name, SCHEME, conns, duration, request_options(kind)))
    return runs


def run(procs: Processes, *, rounds: int = 5, duration: float = 5.0, conns: int = 10, micro_calls: int = 2000,
        verbose: bool = True, keep: bool = False) -> tuple[str, dict[str, Any]]:
    """Start everything in a temporary directory, measure, stop it all; (the report, its numbers)."""
    workdir = Path(tempfile.mkdtemp(prefix="goex-bench-review-"))
    bench = Bench(procs, workdir, verbose=verbose)
    try:
        return _run(bench, rounds, duration, conns, micro_calls)
    except SystemExit:
        keep = True  # keep the logs of a failed run
        raise
    finally:
        bench.close(keep, "review bench")


def _run(bench: Bench, rounds: int, duration: float, conns: int, micro_calls: int) -> tuple[str, dict[str, Any]]:
    """Check, measure the proxies, count what (b) queued meanwhile, then time expected_class() alone."""
    say = print if bench.verbose else (lambda *a, **k: None)
    say("[review] starting the upstream, mitmdump and two goex-proxy runs (without and with review:)...", flush=True)
    _start(bench)
    classes = _check(bench)
    db = bench.dir / f"{REVIEW}-home" / "audit.db"
    before = _counts(db)
    runs = _measure(bench, rounds, duration, conns)
    after = _counts(db)
    say(f"[review] timing expected_class() in-process over the shipped packs ({rounds} rounds x {micro_calls:,} "
        "calls)...", flush=True)
    micro = micro_bench(micro_calls, rounds)
    posts, queued = after[0] - before[0], after[1] - before[1]
    return _report(runs, rounds, duration, conns, classes, posts, queued, micro)


# ---------------------------------------------------------------- expected_class alone, in-process
def shipped_rules() -> tuple[Any, ...]:
    """The rules of every shipped undo pack, in the default order (a config with no `undo_rules` key)."""
    from goex_proxy.config import load_config
    from goex_proxy.undo.rules import load_packs

    with tempfile.TemporaryDirectory(prefix="goex-bench-review-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text("version: 1\n", encoding="utf-8")
        return tuple(load_packs(list(load_config(path).undo_packs)))


def exchange(kind: str, port: int = 8080, answered: bool = False) -> Any:
    """The Exchange the gate builds for one of the two POSTs (URL and headers as the proxy sees loadgen's); with
    `answered`, the one the audit row is classified from, with the bench upstream's answer."""
    from goex_proxy.undo.plan import Exchange

    _, host, path, body = KINDS[kind]
    raw = json.dumps(body).encode()
    url = f"http://{host}{path}" if host else f"http://127.0.0.1:{port}{path}"
    headers = (("host", f"{host}:80" if host else f"127.0.0.1:{port}"), ("user-agent", "goex-bench/1"),
               ("accept", "*/*"), ("content-type", "application/json"), ("content-length", str(len(raw))))
    if not answered:
        return Exchange("POST", url, headers, raw)
    answer = (("Content-Type", "application/json"), ("Content-Length", str(len(UPSTREAM_BODY))),
              ("Server", "bench-upstream"))
    return Exchange("POST", url, headers, raw, 200, answer, UPSTREAM_BODY)


class _Counted:
    """An iterable of rules that counts how many were taken (how far `expected_class` scanned)."""

    def __init__(self, rules: Iterable[Any]) -> None:
        self.rules, self.taken = rules, 0

    def __iter__(self) -> Iterator[Any]:
        for rule in self.rules:
            self.taken += 1
            yield rule


def _timed(fn: Any, n: int) -> list[int]:
    """Nanoseconds of each of n calls (after n // 10 untimed ones)."""
    perf = time.perf_counter_ns
    for _ in range(max(1, n // 10)):
        fn()
    out = [0] * n
    for k in range(n):
        t0 = perf()
        fn()
        out[k] = perf() - t0
    return out


def _pieces(rules: tuple[Any, ...], ex: Any, n: int) -> dict[str, Any]:
    """Where one call's time goes: matching the rules it scans, building and binding its CEL context, the `when`s."""
    from goex_proxy.policy.cel import CelEvalError
    from goex_proxy.undo.plan import Scope, engine_view, expected_class

    counted = _Counted(rules)
    expected_class(counted, ex)
    scanned = rules[:counted.taken]
    target = ex.target()
    hits = [r for r in scanned if r.matches(*target)]
    bound = Scope({**ex.variables(), "response": {}})
    bound.bound()

    def whens() -> None:
        for rule in hits:
            if rule.when is not None:
                try:
                    rule.when.evaluate(engine_view(bound))
                except CelEvalError:
                    pass

    return {"scanned": len(scanned), "matched": len(hits),
            "match_us": median(_timed(lambda: [r.matches(*target) for r in scanned], n)) / 1e3,
            "context_us": median(_timed(lambda: Scope({**ex.variables(), "response": {}}).bound(), n)) / 1e3,
            "when_us": median(_timed(whens, n)) / 1e3,
            "whens": sum(r.when is not None for r in hits)}


def micro_bench(calls: int = 2000, rounds: int = 5) -> dict[str, Any]:
    """expected_class() per call over the shipped packs: p50/p99 per round (medians of rounds), and its pieces; and
    the two passes over the same packs every POST gets without `review:` (pre-image stage, audit row's class)."""
    from goex_proxy.undo.plan import classify, expected_class, preimage_read

    rules = shipped_rules()
    out: dict[str, Any] = {"rules": len(rules)}
    for kind in KINDS:
        ex, answered = exchange(kind), exchange(kind, answered=True)
        fidelity, rule = expected_class(rules, ex)
        per_round = []
        for _ in range(rounds):
            s = sorted(_timed(lambda ex=ex: expected_class(rules, ex), calls))
            per_round.append((percentile(s, 50) / 1e3, percentile(s, 99) / 1e3))
        n = max(200, calls // 4)
        out[kind] = {"class": fidelity, "rule": f"{rule.pack}/{rule.name}" if rule else "none",
                     "p50_us": median([a for a, _ in per_round]), "p99_us": median([b for _, b in per_round]),
                     "preimage_read_us": median(_timed(lambda ex=ex: preimage_read(rules, ex), n)) / 1e3,
                     "classify_us": median(_timed(lambda ex=answered: classify(rules, ex), n)) / 1e3,
                     "row_class": classify(rules, answered), **_pieces(rules, ex, n)}
    return out


# ---------------------------------------------------------------- report
def _med(rs: list[Run]) -> dict[str, float]:
    """Medians over rounds: req/s, latency, CPU per request (all threads, main, others), main thread busy."""
    per = [r for r in rs if r.requests]
    return {"rps": median([r.rps for r in rs]), "p50": median([r.p50_ms for r in rs]),
            "p99": median([r.p99_ms for r in rs]), "cpu": median([r.cpu_us_per_req for r in rs]),
            "main": median([r.main_thread_cpu_s / r.requests * 1e6 for r in per]),
            "other": median([r.other_threads_cpu_s / r.requests * 1e6 for r in per]),
            "busy": median([r.main_thread_cpu_s / r.duration_s * 100 for r in rs])}


def _pair(num: list[Run], den: list[Run]) -> list[float]:
    """Per-round ratios of req/s (runs of the same round, next to each other in time)."""
    return [n.rps / d.rps for n, d in zip(num, den, strict=True) if d.rps]


def _noise(ratios: list[float]) -> float:
    """Half the range of per-round ratios, relative to their median."""
    return (max(ratios) - min(ratios)) / 2 / median(ratios) if ratios else float("nan")


def _span(values: list[float]) -> str:
    """min-max of per-round ratios."""
    return f"{min(values):.2f}-{max(values):.2f}" if values else "n/a"


def _report(runs: dict[str, dict[str, list[Run]]], rounds: int, duration: float, conns: int,
            classes: dict[str, str], posts: int, queued: int, micro: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The tables (proxies, ratios, expected_class alone and its pieces) and the numbers run.py summarises."""
    main_rows, ratio_rows, results = [], [], {}
    for kind, (what, *_) in KINDS.items():
        med = {name: _med(runs[kind][name]) for name in PROXIES}
        for name in PROXIES:
            m = med[name]
            main_rows.append([kind, LABELS[name], fmt(m["rps"], 0), fmt(m["p50"], 2), fmt(m["p99"], 2),
                              fmt(m["cpu"], 0), fmt(m["main"], 0), fmt(m["other"], 0), fmt(m["busy"], 0, "%")])
        bare, plain, review = (med[name] for name in PROXIES)
        a_pair = _pair(runs[kind][PLAIN], runs[kind][BARE])
        b_pair = _pair(runs[kind][REVIEW], runs[kind][BARE])
        ba_pair = _pair(runs[kind][REVIEW], runs[kind][PLAIN])
        a, b = plain["rps"] / bare["rps"], review["rps"] / bare["rps"]
        cost, noise = 1 - review["rps"] / plain["rps"], _noise(a_pair)
        within = cost <= noise
        slower = sum(x < 1 for x in ba_pair)
        results[kind] = {"what": what, "class": classes[kind], "bare_rps": bare["rps"], "a_rps": plain["rps"],
                         "b_rps": review["rps"], "a_ratio": a, "b_ratio": b, "b_over_a": review["rps"] / plain["rps"],
                         "b_over_a_rounds": ba_pair, "a_ratio_rounds": a_pair, "within_noise": within,
                         "cost": cost, "noise": noise, "rounds_b_slower": slower,
                         "added_cpu_us": review["cpu"] - plain["cpu"], "added_main_us": review["main"] - plain["main"],
                         "added_other_us": review["other"] - plain["other"]}
        ratio_rows.append([kind, f"{a:.3f} ({_span(a_pair)})", f"{b:.3f} ({_span(b_pair)})",
                           f"{review['rps'] / plain['rps']:.3f} ({_span(ba_pair)})", f"{slower} of {len(ba_pair)}",
                           f"{signed(review['main'] - plain['main'], 0)} / {signed(review['other'] - plain['other'], 0)}",
                           f"{cost * 100:.0f}% vs {noise * 100:.0f}%: {'within' if within else 'OUTSIDE'}"])
    micro_rows, piece_rows = [], []
    for kind in KINDS:
        m = micro[kind]
        micro_rows.append([KINDS[kind][0], f"{m['class']} ({m['rule']})", fmt(m["p50_us"], 1), fmt(m["p99_us"], 1),
                           fmt(m["preimage_read_us"], 1), f"{fmt(m['classify_us'], 1)} ({m['row_class']})"])
        rest = m["p50_us"] - m["match_us"] - m["context_us"] - m["when_us"]
        piece_rows.append([kind, f"{m['scanned']} ({m['matched']} match)", fmt(m["match_us"], 1),
                           fmt(m["context_us"], 1), f"{fmt(m['when_us'], 1)} ({m['whens']})", signed(rest, 1)])
        results[kind]["expected_class_p50_us"] = m["p50_us"]
        results[kind]["expected_class_p99_us"] = m["p99_us"]
        results[kind]["pieces_us"] = {k: m[k] for k in ("match_us", "context_us", "when_us")}
        results[kind]["today_us"] = {"preimage_read": m["preimage_read_us"], "classify": m["classify_us"]}
    results["counts"] = {"posts": posts, "queued": queued}
    lines = [
        f"== Review pass path: goex-proxy without and with `review:` (all pass) vs bare mitmdump, POST with a small "
        f"JSON body, {SCHEME}, {conns} connections, {rounds} rotating rounds x {duration:g}s, medians ==",
        "Policy: the 24-rule throughput policy (its POST rules allow both requests); (b) adds `review: {exact: pass, "
        "needs-preimage: pass, lossy: pass, irreversible: pass}`.",
        "Queued by (b) when checked: " + "; ".join(f"{kind} {classes[kind]}" for kind in KINDS)
        + f". During the rounds (b) recorded {posts:,} POSTs and queued {queued:,} for review.",
        table(["request", "proxy", "req/s", "p50 ms", "p99 ms", "proxy CPU us/req", "main thread us/req",
               "other threads us/req", "main thread busy"], main_rows),
        "",
        table(["request", "(a)/bare req/s (rounds)", "(b)/bare req/s (rounds)", "(b)/(a) req/s (rounds)",
               "rounds (b) < (a)", "(b)-(a) CPU us/req main / other", "cost 1-(b)/(a) vs noise"], ratio_rows),
        "(Goal: within noise of today's ratio. Cost is 1 - (b)/(a) on medians; noise is half the range of the "
        "per-round (a)/bare ratios over their median: what one round of today's ratio can move by. The other "
        "threads are mostly the audit writer, where the review-queue insert runs.)",
        "",
        f"expected_class() alone, in-process, over the {micro['rules']} rules of the shipped packs "
        f"(per call; p50 and p99 of each round, medians of {rounds} rounds):",
        table(["request", "class (rule)", "p50 us", "p99 us", "today: preimage_read p50", "today: classify p50 "
               "(row's class)"], micro_rows),
        "(Without `review:`, every POST already gets two passes over the same rules: `preimage_read` before it is "
        "sent, `classify` once its response is in; `expected_class` is a third.)",
        "",
        "Where one call's time goes (medians, us): matching the rules it scans (method, host and path globs), "
        "building the request's variables and binding them to the CEL engine, evaluating the `when`s of the rules "
        "that match, timed on a context bound once (the REST pack's call `matches()`, whose regex the engine "
        "compiles on every evaluation); other is the p50 less those, mostly the first evaluations on a freshly bound "
        "context, which cost more:",
        table(["request", "rules scanned", "match", "variables + bind", "when (count)", "other"], piece_rows),
    ]
    return "\n".join(lines), results


if __name__ == "__main__":
    _procs = Processes()
    try:
        print(run(_procs)[0])
    finally:
        _procs.stop_all()
