"""Starting a jailed command: `goex-proxy exec --jail -- true` adds <= 300 ms over plain `exec -- true`.

Whole commands, wall clock, each a subprocess of the same interpreter (`python -m goex_proxy`), interleaved per round:
  A. `exec --agent agent -- true` with a running `goex-proxy run` (its own `goex-proxy init` home, on a free port),
  B. `exec --jail --agent agent -- true` against that same running proxy (the jail is bridged to it),
  C. `exec --jail --agent agent -- true` with no proxy listening (a second home whose port nobody listens on), so it
     starts its in-process proxy for the command's lifetime; for information.
The number held against the target is median(B) - median(A). Every command must exit 0.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import PYTHON, Processes, fmt, free_port, median, percentile, signed, table, wait_port

TARGET_MS = 300.0
AGENT = "agent"  # the agent `goex-proxy init` writes into the starter config


def _home(path: Path, port: int) -> dict[str, str]:
    """`goex-proxy init` into `path`, listening on `port`; the environment that points the CLI at it."""
    env = dict(os.environ, GOEX_PROXY_HOME=str(path))
    proc = subprocess.run([PYTHON, "-m", "goex_proxy", "init"], env=env, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench: goex-proxy init failed ({proc.returncode}): {proc.stderr.decode()[-800:]}")
    config = path / "config.yaml"
    text, n = re.subn(r"(?m)^listen: .*$", f"listen: 127.0.0.1:{port}", config.read_text(encoding="utf-8"))
    if n != 1:
        raise SystemExit(f"bench: no `listen:` line in {config}")
    config.write_text(text, encoding="utf-8")
    return env


def _timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    took = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[2:])} (GOEX_PROXY_HOME={env['GOEX_PROXY_HOME']}) failed with exit "
                         f"code {proc.returncode}: {proc.stderr.decode(errors='replace')[-800:]}")
    return took


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def run(procs: Processes, rounds: int = 20, say: Any = print, keep: bool = False) -> tuple[str, dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="goex-bench-jail-"))
    proxy = None
    try:
        port, idle_port = free_port(), free_port()
        running_env = _home(tmp / "running", port)
        idle_env = _home(tmp / "idle", idle_port)
        say(f"[jail] starting goex-proxy run on 127.0.0.1:{port}...", flush=True)
        proxy = procs.start([PYTHON, "-m", "goex_proxy", "run"], log=tmp / "proxy.log", env=running_env)
        wait_port(port, proxy, what="goex-proxy run")
        plain = [PYTHON, "-m", "goex_proxy", "exec", "--agent", AGENT, "--", "true"]
        jailed = [PYTHON, "-m", "goex_proxy", "exec", "--jail", "--agent", AGENT, "--", "true"]
        cases = {"A": (plain, running_env), "B": (jailed, running_env), "C": (jailed, idle_env)}
        for argv, env in cases.values():  # warm-up: .pyc files, page cache, the proxy's first connection
            _timed(argv, env)
        say(f"[jail] timing exec / exec --jail / exec --jail with no proxy, {rounds} rounds interleaved...",
            flush=True)
        ms: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(rounds):
            for k, (argv, env) in cases.items():
                if k == "C" and _listening(idle_port):
                    raise SystemExit(f"bench: something listens on 127.0.0.1:{idle_port}, the no-proxy case's port")
                ms[k].append(_timed(argv, env))
        if proxy.poll() is not None:
            raise SystemExit(f"bench: goex-proxy run exited ({proxy.returncode}) during the benchmark; see "
                             f"{tmp / 'proxy.log'}")
    finally:
        if proxy is not None:
            procs.stop(proxy)
        if keep:
            say(f"[jail] kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    med = {k: median(v) for k, v in ms.items()}
    p90 = {k: percentile(sorted(v), 90) for k, v in ms.items()}
    added = med["B"] - med["A"]
    added_c = med["C"] - med["A"]
    paired = [b - a for a, b in zip(ms["A"], ms["B"], strict=True)]
    ok = added <= TARGET_MS
    rows = [
        ["A. exec -- true (proxy running)", fmt(med["A"]), fmt(p90["A"]), f"{min(ms['A']):.0f}-{max(ms['A']):.0f}",
         "", "", ""],
        ["B. exec --jail -- true (same proxy)", fmt(med["B"]), fmt(p90["B"]), f"{min(ms['B']):.0f}-{max(ms['B']):.0f}",
         signed(added), f"{med['B'] / med['A']:.2f}x", "PASS" if ok else "FAIL"],
        ["C. exec --jail -- true (no proxy: starts one)", fmt(med["C"]), fmt(p90["C"]),
         f"{min(ms['C']):.0f}-{max(ms['C']):.0f}", signed(added_c), f"{med['C'] / med['A']:.2f}x", ""],
    ]
    lines = [
        f"== Jail start: whole `python -m goex_proxy exec` commands running `true`, wall clock, {rounds} rounds "
        "interleaved A, B, C, every exit code checked ==",
        table(["command (ms)", "median", "p90", "range", "- median A", "/ A", f"B - A <= {TARGET_MS:.0f} ms"], rows),
        f"Per-round B - A: median {signed(median(paired))} ms, range {signed(min(paired))} to {signed(max(paired))} "
        "ms. C is for information: it includes starting and stopping the in-process proxy.",
    ]
    return "\n".join(lines), {
        "plain_ms": med["A"], "jail_ms": med["B"], "jail_no_proxy_ms": med["C"], "plain_p90_ms": p90["A"],
        "jail_p90_ms": p90["B"], "jail_no_proxy_p90_ms": p90["C"], "added_ms": added, "ratio": med["B"] / med["A"],
        "added_no_proxy_ms": added_c, "rounds": rounds, "pass": ok}


if __name__ == "__main__":
    _procs = Processes()
    try:
        print(run(_procs)[0])
    finally:
        _procs.stop_all()
