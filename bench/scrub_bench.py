#!/usr/bin/env python3
"""What scrubbing echoes of injected secrets costs per response, by number of secrets and body size, and how long
building the scrubber takes at 5,000 spellings (an OAuth2 credential refreshed hourly for a month).

    python bench/scrub_bench.py                 # or: python bench/run.py --only scrub
    python bench/scrub_bench.py --quick

Per body it does what the proxy does for one upstream answer without a secret in it: the record stage's
`scrubber.bytes(body)` (the audit row) and the scrub stage's stream over the status reason, the header fields
(`_clean_fields`) and the body (`stream.feed`). Every combination of secrets (0 / 1 / 100 / 1,000, each with all its
spellings) and body (1 KB / 100 KB of pretty-printed JSON) is timed in every round, the rounds alternating; the table
gives medians of rounds. The 0-secrets scrubber is the one the proxy runs without credentials (falsy: nothing to do).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    args = p.parse_args(argv)
    text, _ = run(rounds=args.rounds or (3 if args.quick else 5), budget=0.1 if args.quick else 0.25,
                  refresh_count=12 if args.quick else 48)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
