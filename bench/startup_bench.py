"""How soon `goex-proxy run` listens, and the CPU a proxy process spends importing what it runs on: this tree against
another, side by side, alternating, medians (every worker, `exec --jail`'s in-process proxy and `undo` start so).

    python bench/startup_bench.py --compare-tree DIR     # DIR holds another `goex_proxy` package (a copy of a commit)
    python bench/startup_bench.py --rounds 15
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from common import PYTHON, REPO_DIR, cpu_seconds, free_port, median, table, wait_port

IMPORTS = ("import time; t = time.process_time(); import goex_proxy.runtime, goex_proxy.addons.state, "
           "goex_proxy.cli.run; print(time.process_time() - t)")


def _env(tree: Path | None, home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    if home is not None:
        env["GOEX_PROXY_HOME"] = str(home)
    return env


def import_cpu(tree: Path | None) -> float:
    """CPU seconds a new interpreter spends importing the modules `run` runs on."""
    out = subprocess.run([PYTHON, "-c", IMPORTS], env=_env(tree), capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def run_start(tree: Path | None, home: Path, port: int) -> tuple[float, float]:
    """Seconds until `run --workers 1` accepts a connection, and the CPU seconds it spent by then."""
    began = time.monotonic()
    proc = subprocess.Popen([PYTHON, "-m", "goex_proxy", "run", "--workers", "1", "--quiet"], env=_env(tree, home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, what="goex-proxy run")
        took, spent = time.monotonic() - began, cpu_seconds(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    return took, spent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare-tree", type=Path, help="a directory holding another goex_proxy package")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("-v", "--verbose", action="store_true", help="print each measurement")
    args = p.parse_args()
    trees: dict[str, Path | None] = {"this tree": None}
    if args.compare_tree is not None:
        trees["compared"] = args.compare_tree.resolve()
    home = Path(tempfile.mkdtemp(prefix="goex-bench-startup-")) / "home"
    try:
        measure(args, trees, home)
    finally:
        shutil.rmtree(home.parent, ignore_errors=True)


def measure(args: argparse.Namespace, trees: dict[str, Path | None], home: Path) -> None:
    """The rounds, in a state directory `init` makes at `home`; the table printed."""
    subprocess.run([PYTHON, "-m", "goex_proxy", "init"], env=_env(None, home), check=True, capture_output=True)
    port = free_port()
    config = home / "config.yaml"
    config.write_text(config.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    found: dict[str, dict[str, list[float]]] = {n: {"import": [], "listen": [], "cpu": []} for n in trees}
    for i in range(args.rounds):
        names = list(trees)[i % len(trees):] + list(trees)[:i % len(trees)]
        for name in names:
            found[name]["import"].append(import_cpu(trees[name]))
            took, spent = run_start(trees[name], home, port)
            found[name]["listen"].append(took)
            found[name]["cpu"].append(spent)
            if args.verbose:
                print(f"  {name}: import {found[name]['import'][-1] * 1000:.0f} ms, listens after {took * 1000:.0f} ms, "
                      f"{spent * 1000:.0f} ms of CPU", flush=True)
    rows = [[name, f"{median(f['import']) * 1000:.0f}", f"{median(f['listen']) * 1000:.0f}",
             f"{median(f['cpu']) * 1000:.0f}"] for name, f in found.items()]
    print(f"== Start: {args.rounds} alternating rounds, medians ({REPO_DIR.name}; {os.cpu_count()} cores) ==")
    print(table(["tree", "import CPU ms", "run listens after ms", "run's CPU by then ms"], rows))


if __name__ == "__main__":
    main()
