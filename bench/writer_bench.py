"""The audit writer's CPU per proxied GET: the row written before forwarding and its outcome after, as `run` hands them
to its writer (a transaction per batch: a few rows and the outcomes of the ones before), measured in a child process
per round with `AuditWriter(threaded=False)` on a new log in a temporary state directory. With two workers on two
cores the writer's CPU is taken from the proxies (bench/README.md), so this is what `--workers 2` gains from it.

    python bench/writer_bench.py                         # one writer and two, batches of 2 GETs (as under load), 16
    python bench/writer_bench.py --compare-tree DIR      # also DIR's `goex_proxy`, alternating rounds, side by side
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from common import PYTHON, median, table

#: Run in the child: for each line read, N GETs in batches of B (each batch: B rows, and the outcomes of the batch
#: before), printing the CPU seconds they took per GET; a first N as a warm-up.
CHILD = r"""
import concurrent.futures, json, sys, tempfile, time
from pathlib import Path
from goex_proxy import ids
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter, _Intent, _Outcome

n, batch, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
state = Path(tempfile.mkdtemp(prefix="goex-bench-writer-"))
writers = [AuditWriter(state / "audit.db", Seal(state), threaded=False) for _ in range(count)]
make_id = ids.RequestIds().new
sent = json.dumps([["Host", "api.example.com"], ["User-Agent", "python-httpx/0.27.0"], ["Accept", "*/*"],
                   ["Accept-Encoding", "gzip, deflate"], ["Connection", "keep-alive"],
                   ["Authorization", "Bearer <goex:example>"]])

def row(i):
    return {"id": make_id(), "ts": time.time(), "agent": "bench", "client": f"127.0.0.1:{40000 + i % 10}",
            "method": "GET", "scheme": "https", "host": "api.example.com", "port": 443, "path": f"/items/{i % 50}",
            "url": f"https://api.example.com/items/{i % 50}", "http_version": "HTTP/1.1", "req_headers": sent,
            "req_body": None, "req_body_size": 0, "req_body_sha256": None, "decision": "allow", "rule": "read-items",
            "reason": "matched rule 'read-items'", "report": None, "credential": "example", "undo_of": None}

def outcome(i, ts):
    ended = time.time()
    body = json.dumps({"id": i % 50, "name": f"item {i % 50}", "seen": ended}).encode()
    headers = json.dumps([["Content-Type", "application/json"], ["Content-Length", str(len(body))],
                          ["Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(ended))]])
    return {"status": 200, "resp_headers": headers, "resp_body": body, "resp_body_size": len(body),
            "resp_body_sha256": __import__("hashlib").sha256(body).hexdigest(), "error": None, "ended": ended,
            "duration_ms": round((ended - ts) * 1000, 3), "undo_class": None}

def run(total):
    before = [[] for _ in writers]
    for start in range(0, total, batch):
        at = start // batch % len(writers)  # the writers (of workers) take turns
        writer, rows = writers[at], [row(i) for i in range(start, start + batch)]
        for r in rows:
            writer._queue.put((_Intent(r, None), concurrent.futures.Future()))
        for i, r in enumerate(before[at]):
            writer._queue.put((_Outcome(r["id"], outcome(i, r["ts"])), concurrent.futures.Future()))
        writer.write_queued()
        before[at] = rows
    for writer, rows in zip(writers, before):
        for i, r in enumerate(rows):
            writer._queue.put((_Outcome(r["id"], outcome(i, r["ts"])), concurrent.futures.Future()))
        writer.write_queued()

run(n)
print("ready", flush=True)
for _ in sys.stdin:
    began, wall = time.process_time(), time.perf_counter()
    run(n)
    print((time.process_time() - began) / n, (time.perf_counter() - wall) / n, flush=True)
for writer in writers:
    writer.close()
"""


class Child:
    """Writers in a process of their own, from `tree` (a directory holding `goex_proxy`; None: this environment's),
    writing `count` GETs in batches of `batch`, the `writers` taking turns, each time it is asked."""

    def __init__(self, tree: Path | None, count: int, batch: int, writers: int) -> None:
        env = dict(os.environ)
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        self.proc = subprocess.Popen([PYTHON, "-c", CHILD, str(count), str(batch), str(writers)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench: the writer child ended ({self.proc.wait()})")
        return line

    def measure(self) -> tuple[float, float]:
        """CPU and wall-clock microseconds per GET of one more round (the wall clock also counts the waits for the
        disk: the checkpoints' syncs)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        cpu, wall = self._line().split()
        return float(cpu) * 1e6, float(wall) * 1e6

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


#: (writers, GETs a batch): one writer as `run` has it under load, two as `run --workers 2` has them (each batch
#: follows the other writer's), and larger batches.
CASES = ((1, 2), (2, 2), (1, 4), (1, 16))


def run(*, rounds: int, count: int, compare: Path | None) -> str:
    """Each case: one child per tree, asked in turn (alternating which goes first), so that the machine's slow and
    fast moments fall on both alike."""
    names = ("goex-proxy",) + (("before",) if compare is not None else ())
    trees = {"goex-proxy": None, "before": compare}
    got: dict[tuple[str, tuple[int, int]], list[tuple[float, float]]] = {}
    for case in CASES:
        children = {name: Child(trees[name], count, case[1], case[0]) for name in names}
        try:
            for i in range(rounds):
                for name in names if i % 2 == 0 else names[::-1]:
                    got.setdefault((name, case), []).append(children[name].measure())
        finally:
            for child in children.values():
                child.close()
    rows = []
    for case in CASES:
        now = got[("goex-proxy", case)]
        row: list[object] = [case[0], case[1], f"{median([c for c, _ in now]):.0f}", f"{median([w for _, w in now]):.0f}"]
        if compare is not None:
            before = got[("before", case)]
            ratios = sorted(a[0] / b[0] for a, b in zip(now, before, strict=True))
            walls = sorted(a[1] / b[1] for a, b in zip(now, before, strict=True))
            row += [f"{median([c for c, _ in before]):.0f}", f"{median([w for _, w in before]):.0f}",
                    f"{median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})", f"{median(walls):.2f}"]
        rows.append(row)
    headers = ["writers", "GETs a batch", "us CPU/GET", "us wall/GET"] + (
        ["before CPU", "before wall", "CPU now/before (range)", "wall now/before"] if compare else [])
    return table(headers, rows, f"== Audit writer: CPU and wall-clock time per GET (row + outcome), {count} GETs a "
                                f"round, {rounds} alternating rounds, medians ==")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--count", type=int, default=1000, help="GETs a round")
    p.add_argument("--compare-tree", type=Path, help="a directory holding another `goex_proxy` package")
    args = p.parse_args()
    print(run(rounds=args.rounds, count=args.count, compare=args.compare_tree))
    return 0


if __name__ == "__main__":
    sys.exit(main())
