"""What the jail costs: a jailed `goex-proxy exec` starts <= 150 ms slower than `exec --no-jail`, and a jailed run's
1,000 file changes are undone in <= 1 s.

Everything lives in a temporary directory under ~/.cache (not /tmp: a jail gets a fresh, empty /tmp of its own, so a
home or workspace there would be out of the command's sight): a `goex-proxy init` home whose `goex-proxy run` the bench
starts on a free port, a second home whose port nobody listens on, and small workspaces the commands run in (cwd).

1. Jail start: whole commands, wall clock, each a subprocess of the same interpreter (`python -m goex_proxy`),
   interleaved per round after one warm-up each, every exit code checked:
     A. `exec --no-jail --agent agent -- true` with the running proxy,
     B. `exec --agent agent -- true` (jailed, the default) bridged to that same proxy,
     C. the same jailed command with no proxy listening, so it starts one in-process for its lifetime (information).
   Held against the target: median(B) - median(A).
2. File changes: per round and per kind, a jailed `exec --files review` that writes 1,000 new small files (added) or
   appends to 1,000 existing ones (edited) in its workspace, so the run is recorded and held. Then, in-process (the
   config from `load_config`, so no CLI start-up is counted): `changes.read_layer` on the held layer (the read `finish`
   already did at the run's end, done again to time it), `runs.keep` and `runs.undo`. A second run of the same kind is
   kept in-process and undone with the whole `goex-proxy files undo RUN` command, for comparison. After every undo the
   workspace must hold exactly what it held before. Held against the target: median of `runs.undo`, both kinds.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import PYTHON, Processes, fmt, free_port, median, percentile, signed, table, wait_port

START_TARGET_MS = 150.0
UNDO_TARGET_MS = 1000.0
FILES = 1000
AGENT = "agent"  # the agent `goex-proxy init` writes into the starter config
GOEX = [PYTHON, "-m", "goex_proxy"]
#: What the jailed command does to its workspace, by kind of change (it prints how long that took inside, in us).
SCRIPTS = {"added": f"for i in $(seq {FILES}); do echo new > f$i.txt; done",
           "edited": 'for f in e*.txt; do echo edited >> "$f"; done'}
TIMED_SCRIPT = 'a=$(date +%s%N); {}; b=$(date +%s%N); echo $(( (b - a) / 1000 ))'
RUN_LINE = re.compile(r"goex-proxy: run (\S+) changed (\d+) path")


def _home(path: Path, port: int) -> dict[str, str]:
    """`goex-proxy init` into `path`, listening on `port`; the environment that points the CLI at it."""
    env = dict(os.environ, GOEX_PROXY_HOME=str(path))
    proc = subprocess.run([*GOEX, "init"], env=env, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench: goex-proxy init failed ({proc.returncode}): {proc.stderr.decode()[-800:]}")
    config = path / "config.yaml"
    text, n = re.subn(r"(?m)^listen: .*$", f"listen: 127.0.0.1:{port}", config.read_text(encoding="utf-8"))
    if n != 1:
        raise SystemExit(f"bench: no `listen:` line in {config}")
    config.write_text(text, encoding="utf-8")
    return env


def _timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Run a command to its end: its wall clock in ms and what it printed; stop the bench if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True)
    took = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[2:])} (GOEX_PROXY_HOME={env['GOEX_PROXY_HOME']}, cwd {cwd}) failed "
                         f"with exit code {proc.returncode}: {proc.stderr.decode(errors='replace')[-800:]}")
    return took, proc


def _ms(call: Callable[[], Any]) -> tuple[float, Any]:
    """An in-process call's wall clock in ms, and what it returned."""
    t0 = time.perf_counter()
    out = call()
    return (time.perf_counter() - t0) * 1000, out


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _snapshot(workspace: Path) -> dict[str, bytes]:
    """Every file in the workspace (flat) and its bytes."""
    return {p.name: p.read_bytes() for p in workspace.iterdir()}


def _start_part(cases: dict[str, tuple[list[str], dict[str, str]]], cwd: Path, rounds: int,
                idle_port: int) -> dict[str, list[float]]:
    """Part 1: each case's wall clock per round, interleaved A, B, C after one warm-up each."""
    for argv, env in cases.values():  # warm-up: .pyc files, page cache, the proxy's first connection
        _timed(argv, env, cwd)
    ms: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, (argv, env) in cases.items():
            if k == "C" and _listening(idle_port):
                raise SystemExit(f"bench: something listens on 127.0.0.1:{idle_port}, the no-proxy case's port")
            ms[k].append(_timed(argv, env, cwd)[0])
    return ms


def _held_run(kind: str, workspace: Path, env: dict[str, str]) -> tuple[str, float, float]:
    """A jailed run that makes FILES changes of `kind`, held for review: its id, the exec's wall clock and the
    command's own time inside the jail, in ms."""
    script = TIMED_SCRIPT.format(SCRIPTS[kind])
    took, proc = _timed([*GOEX, "exec", "--files", "review", "--agent", AGENT, "--", "sh", "-c", script], env,
                        workspace)
    err = proc.stderr.decode(errors="replace")
    found = RUN_LINE.search(err)
    if found is None or int(found[2]) != FILES:
        raise SystemExit(f"bench: the {kind} run did not report {FILES} changed paths: {err[-800:]}")
    return found[1], took, int(proc.stdout) / 1000


def _files_round(kind: str, workspace: Path, env: dict[str, str], config: Any) -> dict[str, float]:
    """Part 2, one round of one kind: read_layer, keep and undo in-process, then keep and the `files undo` CLI."""
    from goex_proxy.sandbox import runs
    from goex_proxy.sandbox.changes import read_layer

    before = _snapshot(workspace)
    out: dict[str, float] = {}
    run_id, out["exec"], out["inside"] = _held_run(kind, workspace, env)
    out["read_layer"], changes = _ms(lambda: read_layer(runs.runs_root(config) / run_id / "upper", workspace))
    out["keep"], kept = _ms(lambda: runs.keep(config, run_id))
    out["undo"], undone = _ms(lambda: runs.undo(config, run_id))
    restored = _snapshot(workspace) == before
    if len(changes) != FILES or kept.state != runs.KEPT or undone.state != runs.UNDONE or not restored:
        raise SystemExit(f"bench: run {run_id} ({kind}): {len(changes)} changes read, {kept.state} then "
                         f"{undone.state}, workspace {'restored' if restored else 'NOT restored'}")
    run_id, _, _ = _held_run(kind, workspace, env)
    runs.keep(config, run_id)
    out["cli_undo"], _ = _timed([*GOEX, "files", "undo", run_id], env, workspace)
    if runs.load(config, run_id).state != runs.UNDONE or _snapshot(workspace) != before:
        raise SystemExit(f"bench: `goex-proxy files undo {run_id}` ({kind}) did not restore {workspace}")
    return out


def run(procs: Processes, rounds: int = 20, files_rounds: int = 5, say: Any = print,
        keep: bool = False) -> tuple[str, dict[str, Any]]:
    """Both parts in one temporary directory under ~/.cache, with one running proxy; the text and the numbers."""
    from goex_proxy.config import load_config

    cache = Path.home() / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="goex-bench-jail-", dir=cache))
    proxy = None
    try:
        port, idle_port = free_port(), free_port()
        running_env = _home(tmp / "running", port)
        idle_env = _home(tmp / "idle", idle_port)
        workspaces = {name: tmp / f"ws-{name}" for name in ("start", *SCRIPTS)}
        for ws in workspaces.values():
            ws.mkdir()
        (workspaces["start"] / "README").write_text("a small workspace\n")
        for i in range(FILES):
            (workspaces["edited"] / f"e{i:04d}.txt").write_text(f"line {i}\n")
        say(f"[jail] starting goex-proxy run on 127.0.0.1:{port} (home {tmp / 'running'})...", flush=True)
        proxy = procs.start([*GOEX, "run", "--workers", "1"], log=tmp / "proxy.log", env=running_env)
        wait_port(port, proxy, what="goex-proxy run")
        plain = [*GOEX, "exec", "--no-jail", "--agent", AGENT, "--", "true"]
        jailed = [*GOEX, "exec", "--agent", AGENT, "--", "true"]
        cases = {"A": (plain, running_env), "B": (jailed, running_env), "C": (jailed, idle_env)}
        say(f"[jail] timing exec --no-jail / exec (jailed) / exec (jailed, no proxy), {rounds} rounds interleaved...",
            flush=True)
        ms = _start_part(cases, workspaces["start"], rounds, idle_port)
        say(f"[jail] {files_rounds} rounds of jailed runs changing {FILES:,} files, then read_layer, keep, undo...",
            flush=True)
        config = load_config(tmp / "running" / "config.yaml")
        files: dict[str, list[dict[str, float]]] = {kind: [] for kind in SCRIPTS}
        for _ in range(files_rounds):
            for kind in SCRIPTS:
                files[kind].append(_files_round(kind, workspaces[kind], running_env, config))
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
    start_text, start = _start_report(ms, rounds)
    files_text, file_results = _files_report(files, files_rounds)
    return start_text + "\n\n" + files_text, {**start, "files": file_results,
                                              "pass": start["start_pass"] and file_results["pass"]}


def _start_report(ms: dict[str, list[float]], rounds: int) -> tuple[str, dict[str, Any]]:
    """Part 1's table: median, p90 and range of each command, and what the jail adds."""
    med = {k: median(v) for k, v in ms.items()}
    p90 = {k: percentile(sorted(v), 90) for k, v in ms.items()}
    added, added_c = med["B"] - med["A"], med["C"] - med["A"]
    paired = [b - a for a, b in zip(ms["A"], ms["B"], strict=True)]
    ok = added <= START_TARGET_MS
    names = {"A": "A. exec --no-jail -- true (proxy running)", "B": "B. exec -- true, jailed (same proxy)",
             "C": "C. exec -- true, jailed (no proxy: starts one)"}
    rows = [[names[k], fmt(med[k]), fmt(p90[k]), f"{min(ms[k]):.0f}-{max(ms[k]):.0f}",
             "" if k == "A" else signed(med[k] - med["A"]), "" if k == "A" else f"{med[k] / med['A']:.2f}x",
             ("PASS" if ok else "FAIL") if k == "B" else ""] for k in ms]
    text = "\n".join([
        f"== Jail start: whole `python -m goex_proxy exec` commands running `true`, wall clock, {rounds} rounds "
        "interleaved A, B, C, every exit code checked ==",
        table(["command (ms)", "median", "p90", "range", "- median A", "/ A", f"B - A <= {START_TARGET_MS:.0f} ms"],
              rows),
        f"Per-round B - A: median {signed(median(paired))} ms, range {signed(min(paired))} to {signed(max(paired))} "
        "ms. C is for information: it includes starting and stopping the in-process proxy.",
    ])
    return text, {"plain_ms": med["A"], "jail_ms": med["B"], "jail_no_proxy_ms": med["C"], "plain_p90_ms": p90["A"],
                  "jail_p90_ms": p90["B"], "jail_no_proxy_p90_ms": p90["C"], "added_ms": added,
                  "ratio": med["B"] / med["A"], "added_no_proxy_ms": added_c, "rounds": rounds, "start_pass": ok}


def _files_report(files: dict[str, list[dict[str, float]]], rounds: int) -> tuple[str, dict[str, Any]]:
    """Part 2's table: per kind, the medians of each step over rounds."""
    med = {kind: {step: median([r[step] for r in rs]) for step in rs[0]} for kind, rs in files.items()}
    ok = all(m["undo"] <= UNDO_TARGET_MS for m in med.values())
    rows = []
    for kind, m in med.items():
        undos = [r["undo"] for r in files[kind]]
        rows.append([f"{FILES:,} files {kind}", fmt(m["exec"], 0), fmt(m["inside"], 0), fmt(m["read_layer"]),
                     fmt(m["keep"]), fmt(m["undo"]), f"{min(undos):.0f}-{max(undos):.0f}", fmt(m["cli_undo"]),
                     signed(m["cli_undo"] - m["undo"], 0), "PASS" if m["undo"] <= UNDO_TARGET_MS else "FAIL"])
    text = "\n".join([
        f"== Jailed run's file changes: exec --files review, then read_layer / runs.keep / runs.undo in-process and "
        f"the `files undo RUN` CLI, {rounds} rounds, medians in ms, every workspace checked restored ==",
        table(["run", "exec (jailed)", "command inside", "read_layer", "keep", "undo", "undo range", "CLI files undo",
               "CLI - undo", f"undo <= {UNDO_TARGET_MS:.0f} ms"], rows),
        "exec is the whole jailed command (it includes read_layer and recording the run), command inside the shell "
        "loop's own time in the jail; read_layer is that read again on the held layer. The CLI undoes a second run, "
        "kept in-process; CLI - undo is mostly its start-up.",
    ])
    return text, {"rounds": rounds, "files": FILES, "pass": ok,
                  **{kind: {f"{step}_ms": v for step, v in m.items()} for kind, m in med.items()}}


if __name__ == "__main__":
    _procs = Processes()
    try:
        print(run(_procs)[0])
    finally:
        _procs.stop_all()
