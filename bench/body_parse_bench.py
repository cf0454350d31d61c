"""How long the decide stage holds the event loop reading a hostile body before any rule is tried: 32 MiB (the default
`limits.max_request_body`) of JSON made of small values, and a urlencoded form whose one field is all escapes, parsed
as the stage parses them (`checked_json`, then the view's form, method overrides and key checks), in a child process
per tree, side by side with another tree.

    python bench/body_parse_bench.py [--rounds 3] [--mib 32] [--compare-tree DIR]

Every other agent's requests wait that long on the same worker: the goal is linear time in C where a library has it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from common import PYTHON, median, table

#: Run in the child: each case built, parsed as the decide stage does, and timed; one JSON line of seconds by case.
CHILD = r"""
import gc, json, sys, time
from goex_proxy.policy import requestview as rv
size = int(sys.argv[1])
cases = {
    "JSON [{},{},...]": (b"[" + b"{}," * (size // 3) + b"{}]", "application/json"),
    "JSON [[],[],...]": (b"[" + b"[]," * (size // 3) + b"[]]", "application/json"),
    "JSON [1,1,...]": (b"[" + b"1," * (size // 2) + b"1]", "application/json"),
    "form a=%41%41...": (b"a=" + b"%41" * (size // 3), "application/x-www-form-urlencoded"),
    "no type, _method=%41...": (b"_method=" + b"%41" * (size // 3), ""),
}
out = {}
for name, (body, content_type) in cases.items():
    gc.collect()
    start = time.perf_counter()
    problem, parsed = rv.checked_json(body)
    view = rv.with_json(rv.RequestView(agent="a", method="POST", scheme="https", host="h", port=443, path="/",
                                       headers=(("content-type", content_type),) if content_type else (), body=body),
                        parsed)
    view.override_methods, rv.repeated_keys(view), rv.key_collision(view), rv.content_type_problem(view)
    out[name] = time.perf_counter() - start
    del view, parsed
print(json.dumps(out))
"""


def measure(tree: Path | None, size: int) -> dict[str, float]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    done = subprocess.run([PYTHON, "-c", CHILD, str(size)], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(rounds: int, mib: int, compare: Path | None) -> str:
    trees: dict[str, Path | None] = {"this tree": None}
    if compare is not None:
        trees["compared"] = compare
    seconds: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():  # alternating: the machine's load weighs on both alike
            for case, took in measure(tree, mib << 20).items():
                seconds[name].setdefault(case, []).append(took)
    cases = list(seconds["this tree"])
    rows = []
    for case in cases:
        now = median(seconds["this tree"][case])
        row = [case, f"{now:.2f}"]
        if compare is not None:
            before = median(seconds["compared"][case])
            row += [f"{before:.2f}", f"{before / now:.1f}x"]
        rows.append(row)
    head = ["body", "this tree, s"] + (["compared, s", "faster"] if compare is not None else [])
    return (f"== The decide stage's parse of a hostile {mib} MiB body (medians of {rounds} rounds, one child process "
            "a tree a round) ==\n" + table(head, rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mib", type=int, default=32)
    p.add_argument("--compare-tree", type=Path, help="a directory holding another `goex_proxy` package")
    args = p.parse_args()
    print(run(args.rounds, args.mib, args.compare_tree))
