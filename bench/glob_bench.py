"""Hostile paths against path globs: how long one match holds the event loop, with Python's backtracking `re` (the
engine the globs used before) side by side with RE2 (the one they use now), on the red team's two patterns.

    python bench/glob_bench.py

`re` is timed on short paths only (its time grows as a power of the length: the full-size paths took 3-32 s); RE2 on
those and on the full-size ones. Medians of 5, in milliseconds.
"""

from __future__ import annotations

import re
import statistics
import time

from goex_proxy.globs import _translate, compile_path

CASES = [
    # (glob, a path that almost matches, lengths to try with `re`, the full length the red team sent)
    ("/api/*-*-*-*-x", lambda n: "/api/" + "-" * n, (40, 80, 120), 405),
    ("/repos/**/issues/**/comments", lambda n: "/repos/" + "issues/" * (n // 7), (700, 1400, 2800), 90_000),
]


def clock(fn, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    print(f"{'glob':<32} {'path bytes':>10} {'re (ms)':>10} {'RE2 (ms)':>10} {'re / RE2':>10}")
    for pattern, make, lengths, full in CASES:
        backtracking = re.compile(_translate(pattern, "/"))
        linear = compile_path(pattern)
        for n in (*lengths, full):
            path = make(n)
            ms_re2 = clock(lambda g=linear, p=path: g.matches(p))
            if n == full:
                print(f"{pattern:<32} {len(path):>10,} {'(skipped)':>10} {ms_re2:>10.3f} {'':>10}")
                continue
            ms_re = clock(lambda r=backtracking, p=path: r.fullmatch(p))
            print(f"{pattern:<32} {len(path):>10,} {ms_re:>10.3f} {ms_re2:>10.3f} {ms_re / ms_re2:>9.0f}x")


if __name__ == "__main__":
    main()
