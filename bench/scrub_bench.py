#!/usr/bin/env python3
"""What scrubbing echoes of injected secrets costs per response, by number of secrets and body size, and how long
building the scrubber takes at 5,000 spellings (an OAuth2 credential refreshed hourly for a month).

    python bench/scrub_bench.py                 # or: python bench/run.py --only scrub
    python bench/scrub_bench.py --quick
    python bench/scrub_bench.py --e2e           # also through real `goex-proxy run`s (about 2 minutes more)
    python bench/scrub_bench.py --e2e --compare-tree DIR   # and the same proxies run from another checkout

End to end (`--e2e`): one `goex-proxy run` per number of secrets (0 / 1 / 100, each secret a credential whose
secret comes from the environment; the scrubber scrubs every answer, whichever host it is from), all running at once
and measured in turn, alternating, with the load generator of the throughput bench (plain HTTP, keep-alive) against
an upstream that answers the same pretty-printed JSON of 1 KB or 100 KB. Ratios are req/s over the 0-secrets proxy's in
the same round. `--compare-tree DIR` runs a second set of proxies with DIR on PYTHONPATH, DIR holding a package
`goex_proxy` laid out as installed (proxy/ with addons/ and policies/ inside): the code before a change, measured side
by side with the working tree's (or with `--tree DIR`'s, another such directory: two commits side by side).

Per body it does what the proxy does for one upstream answer without a secret in it: the record stage's
`scrubber.bytes(body)` (the audit row) and the scrub stage's stream over the status reason, the header fields
(`_clean_fields`) and the body (`stream.feed`). Every combination of secrets (0 / 1 / 100 / 1,000, each with all its
spellings) and body (1 KB / 100 KB of pretty-printed JSON) is timed in every round, the rounds alternating; the table
gives medians of rounds. The 0-secrets scrubber is the one the proxy runs without credentials (falsy: nothing to do).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, Processes, free_port, table, wait_port  # noqa: E402

SECRET_COUNTS = (0, 1, 100, 1000)
BODY_SIZES = (1_000, 100_000)
REBUILD_SPELLINGS = 5_000
VARIANTS = 16
HEADERS = ((b"Content-Type", b"application/json"), (b"Content-Length", b"100000"), (b"Server", b"bench-upstream"),
           (b"Date", b"Fri, 04 Dec 2026 12:00:00 GMT"), (b"Cache-Control", b"no-store"),
           (b"X-Request-Id", b"0f6c1c7e-8d52-4a52-9d3a-6b3c5a1f2e90"), (b"Vary", b"Accept-Encoding"))


def secrets(count: int, seed: int = 7) -> list[str]:
    """Token-like secrets of 40 to 72 characters (prefix, letters, digits and a few punctuation marks)."""
    rng = random.Random(seed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_./+="
    return [rng.choice(("sk-", "xoxb-", "ghp_", "ya29.")) + "".join(rng.choices(alphabet, k=rng.randint(40, 72)))
            for _ in range(count)]


def forms_of(values: list[str]) -> dict[str, str]:
    """Every spelling of each secret (as `ProxyState.load_secrets` collects them) to its credential's placeholder."""
    from goex_proxy.credentials.kinds import Credential, Injection
    from goex_proxy.secretref import SecretRef

    out: dict[str, str] = {}
    for i, value in enumerate(values):
        credential = Credential(f"c{i}", SecretRef(env=f"C{i}"), (), Injection("header"))
        out.update({form: credential.placeholder for form in credential.forms(value)})
    return out


def body(size: int, seed: int = 11) -> bytes:
    """Pretty-printed JSON of about `size` bytes, no secret in it (line breaks make the scrubber join lines)."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    text = b""
    while len(text) < size:
        items.append({"id": rng.randrange(10**9), "name": "".join(rng.choices("abcdefghij klmnop", k=24)),
                      "tags": ["alpha", "beta"], "ok": rng.random() < 0.5})
        text = json.dumps({"items": items}, indent=2).encode()
    return text[:size]


def per_body(scrubber: Any) -> Callable[[bytes], None]:
    """What the proxy does with one answer's body: record it (scrubbed), then scrub the answer as one stream."""
    from goex_proxy.addons.scrub import _clean_fields

    def work(content: bytes) -> None:
        scrubber.bytes(content)  # the record stage's audit row (rows._body)
        if not scrubber:  # the scrub stage returns here without credentials
            return
        stream = scrubber.stream()
        _clean_fields(stream, b"OK", HEADERS)
        stream.feed(content)

    return work


def refreshes(seed: int = 3) -> Iterator[dict[str, str]]:
    """The spellings one hourly refresh of an OAuth2 credential adds (a new access token), one refresh after another:
    `ProxyState.remember_tokens` keeps every earlier token's too."""
    from goex_proxy.credentials.kinds import Credential, Injection
    from goex_proxy.secretref import SecretRef

    credential = Credential("gmail", SecretRef(vault="gmail"), (), Injection("header"))
    rng = random.Random(seed)
    while True:
        token = "ya29." + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", k=160))
        yield {form: credential.placeholder for form in credential.forms(token)}


def spellings_of_a_month(target: int = REBUILD_SPELLINGS) -> dict[str, str]:
    """The spellings an hourly-refreshed OAuth2 credential has gathered once there are `target` of them."""
    out: dict[str, str] = {}
    for added in refreshes():
        out.update(added)
        if len(out) >= target:
            return out
    raise AssertionError("unreachable")


def refresh_ms(scrubber_type: Any, month: dict[str, str], count: int) -> list[float]:
    """Milliseconds to make the scrubber at each of `count` refreshes after `month`, as `remember_tokens` does (with
    the previous scrubber as its base where the scrubber takes one)."""
    forms, times = dict(month), []
    scrubber = scrubber_type(forms)
    later = refreshes(seed=5)
    for _ in range(count):
        forms.update(next(later))
        start = time.perf_counter()
        try:
            scrubber = scrubber_type(forms, base=scrubber)
        except TypeError:  # a scrubber without `base` (before the layered one)
            scrubber = scrubber_type(forms)
        times.append((time.perf_counter() - start) * 1000)
    return times


def run(rounds: int = 5, budget: float = 0.25, refresh_count: int = 48, say: Callable[..., Any] = print) -> tuple[str, dict[str, Any]]:
    from goex_proxy.credentials.redact import SecretScrubber

    # Distinct bodies of each size, differing only in their last bytes (the scrubber remembers the last few bodies it
    # scanned, which spares the scrub stage a second scan of the body the record stage scanned, not a new answer's).
    bodies = {size: [body(size)[:-6] + b"%06d" % i for i in range(VARIANTS)] for size in BODY_SIZES}
    scrubbers: dict[int, Any] = {}
    build_s: dict[int, float] = {}
    for n in SECRET_COUNTS:
        forms = forms_of(secrets(n))
        start = time.perf_counter()
        scrubbers[n] = SecretScrubber(forms)
        build_s[n] = time.perf_counter() - start
        say(f"[scrub] {n:,} secrets: {len(forms):,} spellings, built in {build_s[n] * 1000:,.1f} ms", flush=True)
    works = {n: per_body(s) for n, s in scrubbers.items()}
    # Iterations per (secrets, body) from a first timing, so each cell takes about `budget` seconds a round.
    iterations: dict[tuple[int, int], int] = {}
    for n in SECRET_COUNTS:
        for size, variants in bodies.items():
            start = time.perf_counter()
            works[n](variants[0])
            once = max(time.perf_counter() - start, 1e-6)
            iterations[n, size] = max(1, min(20_000, int(budget / once)))
    samples: dict[tuple[int, int], list[float]] = {key: [] for key in iterations}
    for r in range(rounds):
        order = list(iterations) if r % 2 == 0 else list(reversed(iterations))
        for key in order:
            n, size = key
            work, variants, k = works[n], bodies[size], iterations[key]
            start = time.perf_counter()
            for i in range(k):
                work(variants[i % VARIANTS])
            samples[key].append((time.perf_counter() - start) / k * 1e6)
        say(f"[scrub] round {r + 1}/{rounds} done", flush=True)
    month = spellings_of_a_month()
    rebuild = []
    for _ in range(3):
        start = time.perf_counter()
        SecretScrubber(month)
        rebuild.append(time.perf_counter() - start)
    refresh = refresh_ms(SecretScrubber, month, refresh_count)
    results: dict[str, Any] = {"per_body_us": {}, "build_ms": {n: build_s[n] * 1000 for n in SECRET_COUNTS},
                               "spellings": {n: len(forms_of(secrets(n))) for n in SECRET_COUNTS},
                               "rebuild_spellings": len(month), "rebuild_ms": statistics.median(rebuild) * 1000,
                               "refresh_ms": {"median": statistics.median(refresh), "mean": statistics.fmean(refresh),
                                              "max": max(refresh), "count": len(refresh)}}
    rows = []
    for size in BODY_SIZES:
        base = statistics.median(samples[0, size])
        for n in SECRET_COUNTS:
            us = statistics.median(samples[n, size])
            spread = (max(samples[n, size]) - min(samples[n, size])) / us if us else 0.0
            results["per_body_us"][f"{n}x{size}"] = us
            rows.append([f"{size // 1000} KB", f"{n:,}", f"{results['spellings'][n]:,}", f"{us:,.1f}",
                         f"{us - base:+,.1f}", f"{spread:.0%}", f"{results['build_ms'][n]:,.1f}"])
    text = table(["body", "secrets", "spellings", "us per body (median)", "over 0 secrets", "spread",
                  "build ms"], rows, title="scrubber alone: record + scrub stage per answer without a secret")
    text += (f"\nrebuilding the scrubber at {len(month):,} spellings (one OAuth2 credential, hourly refreshes): "
             f"{results['rebuild_ms']:,.1f} ms (median of 3)\n"
             f"then {len(refresh)} more hourly refreshes, the scrubber made anew at each: median "
             f"{results['refresh_ms']['median']:,.1f} ms, mean {results['refresh_ms']['mean']:,.1f} ms, "
             f"max {results['refresh_ms']['max']:,.1f} ms")
    return text, results


E2E_COUNTS = (0, 1, 100)


def serve(ports: list[int]) -> None:
    """The upstream: on each port, every GET is answered with the body of the size at the same place in BODY_SIZES."""

    def responder(content: bytes) -> Callable[[], asyncio.Protocol]:
        response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(content)).encode()
                    + b"\r\nServer: scrub-bench\r\n\r\n" + content)

        class Answer(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport, self.buf = transport, b""

            def data_received(self, data: bytes) -> None:
                self.buf += data
                while (end := self.buf.find(b"\r\n\r\n")) >= 0:  # GETs: no request bodies
                    self.buf = self.buf[end + 4:]
                    self.transport.write(response)  # type: ignore[attr-defined]

        return Answer

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for port, size in zip(ports, BODY_SIZES, strict=True):
            await loop.create_server(responder(body(size)), "127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())


def credentials_yaml(values: list[str], prefix: str) -> str:
    """One credential per secret, each read from an environment variable this process sets."""
    lines = ["credentials:"] if values else []
    for i, value in enumerate(values):
        os.environ[f"{prefix}{i}"] = value
        lines += [f"  c{i}:", f"    secret: {{env: {prefix}{i}}}", f"    hosts: [c{i}.scrub-bench.example]",
                  '    inject: {header: Authorization, value: "Bearer {secret}"}']
    return "\n".join(lines) + "\n"


def run_e2e(procs: Processes, rounds: int = 3, duration: float = 3.0, conns: int = 10, compare: Path | None = None,
            tree: Path | None = None, keep: bool = False, say: Callable[..., Any] = print) -> tuple[str, dict[str, Any]]:
    import trustme
    from throughput import Bench

    bench = Bench(procs, Path(tempfile.mkdtemp(prefix="goex-scrub-bench-")))
    try:
        ports = [free_port() for _ in BODY_SIZES]
        bench.upstream = procs.start([PYTHON, str(Path(__file__).resolve()), "--upstream", *map(str, ports)],
                                     log=bench.dir / "upstream.log")
        for port in ports:
            wait_port(port, bench.upstream, what="scrub bench upstream")
        bench.upstream_ca = bench.dir / "unused-ca.pem"  # the config names one; every request here is plain HTTP
        trustme.CA().cert_pem.write_to_path(str(bench.upstream_ca))
        bench.http_port = ports[0]
        trees = {"": tree, **({"old ": compare} if compare else {})}
        for label, tree in trees.items():
            for n in E2E_COUNTS:
                saved = os.environ.get("PYTHONPATH")
                if tree is not None:
                    os.environ["PYTHONPATH"] = str(tree)
                try:
                    name = f"{label}{n} secrets"
                    say(f"[scrub] starting goex-proxy with {n} secrets{' from ' + str(tree) if tree else ''}", flush=True)
                    bench.proxies[name] = bench._start_goex(name.replace(" ", "-"),
                                                            config_lines=credentials_yaml(secrets(n), "SCRUB_BENCH_S"))
                finally:
                    if tree is not None:
                        if saved is None:
                            os.environ.pop("PYTHONPATH", None)
                        else:
                            os.environ["PYTHONPATH"] = saved
        names = list(bench.proxies)
        runs: dict[tuple[str, int], list[Any]] = {(name, size): [] for name in names for size in BODY_SIZES}
        for r in range(rounds):
            for port, size in zip(ports, BODY_SIZES, strict=True):
                bench.http_port = port
                for name in names if r % 2 == 0 else reversed(names):
                    runs[name, size].append(bench.measure(name, "http", conns, duration))
            say(f"[scrub] end-to-end round {r + 1}/{rounds} done", flush=True)
        results: dict[str, Any] = {}
        rows = []
        for label in trees:
            for size in BODY_SIZES:
                base = runs[f"{label}0 secrets", size]
                for n in E2E_COUNTS:
                    mine = runs[f"{label}{n} secrets", size]
                    ratio = statistics.median(m.rps / b.rps for m, b in zip(mine, base, strict=True))
                    rps = statistics.median(m.rps for m in mine)
                    cpu = statistics.median(m.cpu_us_per_req for m in mine)
                    errors = sum(sum(m.errors.values()) for m in mine if m.errors)
                    results[f"{label}{n}x{size}"] = {"rps": rps, "ratio": ratio, "cpu_us_per_req": cpu, "errors": errors}
                    rows.append([(label or "working tree ").strip(), f"{size // 1000} KB", f"{n:,}", f"{rps:,.0f}",
                                 f"{ratio:.3f}", f"{cpu:,.0f}", str(errors)])
        text = table(["code", "body", "secrets", "req/s (median)", "/ 0 secrets", "proxy CPU us/req", "errors"], rows,
                     title=f"end to end: goex-proxy run, plain HTTP, {conns} connections, {rounds} rounds of {duration:g} s")
        return text, results
    except SystemExit:
        keep = True
        raise
    finally:
        bench.close(keep, "scrub bench")


def run_all(procs: Processes, quick: bool = False, rounds: int | None = None, say: Callable[..., Any] = print,
            keep: bool = False) -> tuple[str, dict[str, Any]]:
    """Both parts, as `bench/run.py --only scrub` runs them."""
    rounds = rounds or (3 if quick else 5)
    alone, results = run(rounds=rounds, budget=0.1 if quick else 0.25, refresh_count=12 if quick else 48, say=say)
    e2e, results["e2e"] = run_e2e(procs, rounds=rounds, duration=1.5 if quick else 3.0, keep=keep, say=say)
    return alone + "\n\n" + e2e, results


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    p.add_argument("--e2e", action="store_true", help="also measure through real proxies")
    p.add_argument("--e2e-only", action="store_true", help="only the end-to-end part")
    p.add_argument("--compare-tree", type=Path, help="a directory with an older goex_proxy package to run as well")
    p.add_argument("--tree", type=Path, help="a directory with the goex_proxy package to run (default: as installed)")
    p.add_argument("--duration", type=float, help="seconds per end-to-end run (default 3; quick 1.5)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--upstream", type=int, nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.upstream:
        serve(args.upstream)
        return 0
    rounds = args.rounds or (3 if args.quick else 5)
    if not args.e2e_only:
        text, _ = run(rounds=rounds, budget=0.1 if args.quick else 0.25, refresh_count=12 if args.quick else 48)
        print(text)
    if args.e2e or args.e2e_only:
        procs = Processes()
        try:
            text, _ = run_e2e(procs, rounds=rounds, duration=args.duration or (1.5 if args.quick else 3.0),
                              compare=args.compare_tree, tree=args.tree, keep=args.keep)
        finally:
            procs.stop_all()
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
