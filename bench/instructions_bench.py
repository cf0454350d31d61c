"""Instructions a GET costs one `goex-proxy run --workers 1` (its proxy process, not the audit writer's), counted by
valgrind's callgrind, for two trees side by side: a count that the machine's load does not move (CPU time on this
shared machine moves by half from one round to the next), for changes too small for the throughput benches to see.
The proxy runs about fifty times slower under valgrind, so each round serves a few hundred GETs.

    python bench/instructions_bench.py --tree NOW --compare-tree BEFORE [--scheme https] [--rounds 2] [--duration 40]

Each tree is a directory holding a `goex_proxy` package; needs `valgrind` (apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from common import BENCH_DIR, PYTHON, Processes, free_port, median, table, tool, wait_port
from policies_gen import throughput_policy, to_yaml
from throughput import AGENT, PATH, TOKEN, Bench


def instructions(bench: Bench, tree: Path, scheme: str, duration: float, n: int) -> tuple[int, int]:
    """Requests served in one window of `duration` seconds after a warm-up, and the instructions the proxy ran in it."""
    home = bench.dir / f"home{n}"
    env = {**os.environ, "GOEX_PROXY_HOME": str(home), "PYTHONPATH": str(tree)}
    subprocess.run([tool("goex-proxy"), "init"], env=env, check=True, stdout=subprocess.DEVNULL)
    policy = home / "bench-policy.yaml"
    policy.write_text(to_yaml(throughput_policy("127.0.0.1")), encoding="utf-8")
    port = free_port()
    bench._write_goex_config(home / "config.yaml", port, policy)
    out = bench.dir / f"callgrind{n}.out"
    proc = bench.procs.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", PYTHON, "-m", "goex_proxy",
                              "run", "--config", str(home / "config.yaml"), "--workers", "1"],
                             env=env, log=bench.dir / f"proxy{n}.log")
    try:
        wait_port(port, proc, timeout=600, what="goex-proxy under valgrind")
        target = bench.http_port if scheme == "http" else bench.https_port
        load = [PYTHON, str(BENCH_DIR / "loadgen.py"), "--scheme", scheme, "--target-port", str(target), "--path", PATH,
                "--conns", "10", "--proxy-port", str(port), "--proxy-auth", f"{AGENT}:{TOKEN}",
                "--ca", str(home / "mitmproxy-ca-cert.pem")]
        subprocess.run([*load, "--duration", "10"], check=True, stdout=subprocess.DEVNULL)  # warm-up
        control = shutil.which("callgrind_control") or "callgrind_control"
        result: dict[str, object] = {}
        loadgen = subprocess.Popen([*load, "--duration", str(duration)], stdout=subprocess.PIPE)
        assert loadgen.stdout is not None
        for raw in loadgen.stdout:
            line = raw.decode().strip()
            if line in ("window-start", "window-end"):  # counts zeroed, then dumped: what the window ran
                subprocess.run([control, "-z" if line == "window-start" else "-d", str(proc.pid)], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elif line.startswith("{"):
                result = json.loads(line)
        loadgen.wait()
        dumped = out.with_name(out.name + ".1")
        for _ in range(120):
            if dumped.exists() and "totals:" in dumped.read_text(errors="replace"):
                break
            time.sleep(0.5)
        totals = [line for line in dumped.read_text(errors="replace").splitlines() if line.startswith("totals:")]
        if not totals or result.get("errors"):
            raise SystemExit(f"bench: no count from callgrind ({dumped}) or errors {result.get('errors')}")
        return int(str(result["requests"])), int(totals[0].split()[1])
    finally:
        proc.send_signal(signal.SIGINT)
        bench.procs.stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, required=True, help="a directory holding the `goex_proxy` package measured")
    p.add_argument("--compare-tree", type=Path, required=True, help="another, measured side by side")
    p.add_argument("--scheme", choices=("http", "https"), default="http")
    p.add_argument("--rounds", type=int, default=2, help="rounds of each tree, alternating")
    p.add_argument("--duration", type=float, default=40.0, help="seconds of load counted a round")
    args = p.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("bench: needs valgrind (apt-get install valgrind)")
    procs = Processes()
    bench = Bench(procs, Path(tempfile.mkdtemp(prefix="goex-bench-instructions-")))
    per_get: dict[str, list[float]] = {"tree": [], "compare": []}
    try:
        bench.setup(only="upstream")
        n = 0
        for i in range(args.rounds):
            for name in (("tree", "compare") if i % 2 == 0 else ("compare", "tree")):
                n += 1
                requests, count = instructions(bench, args.tree if name == "tree" else args.compare_tree,
                                               args.scheme, args.duration, n)
                per_get[name].append(count / requests)
                print(f"[instructions] {name}: {requests} GETs, {count / requests / 1000:,.0f}k instructions a GET",
                      flush=True)
    finally:
        bench.close(False)
    now, before = median(per_get["tree"]), median(per_get["compare"])
    print(table(["scheme", "tree k/GET", "compare k/GET", "tree / compare"],
                [[args.scheme, f"{now / 1000:,.0f}", f"{before / 1000:,.0f}", f"{now / before:.3f}"]],
                title=f"== Instructions a GET of one proxy process under callgrind ({args.tree} vs {args.compare_tree}, "
                      f"{args.rounds} alternating rounds of {args.duration:g}s, medians) =="))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
