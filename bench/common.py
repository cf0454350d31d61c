"""Shared helpers for the benchmark suite: child processes (always cleaned up), free ports, CPU time, statistics."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def tool(name: str) -> str:
    """A console script of this interpreter's environment (goex-proxy, mitmdump), else one on PATH."""
    beside = Path(PYTHON).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"bench: cannot find {name!r} next to {PYTHON} or on PATH; run with the project's venv python")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0, what: str = "") -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port (and the process is still alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'process'} exited with code {proc.returncode} before listening on {port}"
                               f"{_tail(proc)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what or 'process'} did not listen on 127.0.0.1:{port} within {timeout:.0f}s{_tail(proc)}")


def _tail(proc: subprocess.Popen[bytes] | None) -> str:
    log = getattr(proc, "bench_log", None)
    if not log:
        return ""
    try:
        text = Path(log).read_text(errors="replace")[-2000:]
    except OSError:
        return ""
    return f"\n--- last output of {log} ---\n{text}"


class Processes:
    """Every child the benchmark starts, each in its own session; `stop_all` ends them by pid, then by kill."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], *, log: Path | None = None, env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=stdout if stdout is not None else out,
                                stderr=out, env=env, start_new_session=True, cwd=str(REPO_DIR))
        proc.bench_log = str(log) if log else None  # type: ignore[attr-defined]
        proc.bench_file = out  # type: ignore[attr-defined]
        self.children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                # The child was started in a session of its own, so its group is only it and what it started.
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        f = getattr(proc, "bench_file", None)
        if f not in (None, subprocess.DEVNULL):
            f.close()
        if proc in self.children:
            self.children.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.children)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep cleaning up the others
                print(f"bench: could not stop pid {proc.pid}: {exc}", file=sys.stderr)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and every process below it (`run --workers`' workers)."""
    total, seen, todo = 0.0, set(), [pid]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        spent = cpu_seconds(current)
        total += spent if spent == spent else 0.0  # a process gone meanwhile (nan) counts nothing
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return total


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time of each thread of a process, by thread id (the main thread's id is the pid)."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def median(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    """A plain-text table: first column left-aligned, the rest right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))

    out = []
    if title:
        out.append(title)
    out.append(line(cells[0]))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def signed(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:+,.{digits}f}"


def fmt(value: float, digits: int = 1, suffix: str = "") -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"
