"""Denial of service: peak memory of goex-proxy under decompression bombs and a large plain body, and how long a
hostile path holds its event loop (what the red team's attacks did: an 841-byte brotli body grew the proxy to 3.1 GB,
a 90 KB path held the loop for seconds).

    python bench/run.py --only dos         # or: python bench/dos_bench.py

Real parts on 127.0.0.1 with free ports, in a temporary directory: a sink upstream (this file run with `--sink`: it
reads and discards Content-Length bodies of any size, then answers with the bench upstream's small JSON) and
`goex-proxy run`s started as throughput.py starts them (its Bench), with a policy allowing POST /bench/upload and
GET /bench/** on 127.0.0.1 and the red team's two path globs (glob_bench.CASES). Requests are plain HTTP in absolute
form with `Proxy-Authorization: Basic`.

1. Memory: one fresh proxy per case, so that the kernel's high-water mark (VmHWM in /proc/PID/status) is that case's
   exact peak RSS: sampling VmRSS every few ms can miss a short peak, and a proxy reused across cases keeps freed
   memory (a later case would start from an earlier one's heap). Each proxy first gets one small POST in every coding
   (every decoder imported, the policy checked to allow the upload), then its RSS is the baseline; the case is one
   POST; its peak is VmHWM after the response. Cases: brotli and zstd bombs of 1 GiB of zeros, the red team's gzip
   bomb (256 MiB in ~255 KB), the same twice as two gzip members (over 320 KB, so only the 64 MiB cap stops it), gzip
   in gzip declared `Content-Encoding: gzip, gzip`, and a plain 256 MiB body. Held against the goals: peak minus
   baseline <= 300 MiB for the bombs (the proxy stops decoding at 64 MiB, or at 200 times the encoded size past
   1 MiB) and <= 2x the body for the plain one.
2. Stall: one proxy; a steady client (one keep-alive connection, sequential GETs, closed loop) runs throughout while
   the main thread alternates quiet windows and attack windows in which it sends the hostile paths one after the
   other, each on a new connection. A steady request overlapping an attack window counts as "under attack", one
   inside a quiet window as quiet. Held against the goal: per round, the max latency under attack minus the quiet
   p50 (the most a request was held up beyond a typical one), median of rounds, <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import socket
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    PYTHON,
    Processes,
    fmt,
    free_port,
    median,
    percentile,
    table,
    thread_cpu_seconds,
    wait_port,
)
from glob_bench import CASES as GLOB_CASES
from throughput import AGENT, TOKEN, Bench, Proxy

MiB = 1 << 20
BOMB_GROWTH_MIB = 300.0
PLAIN_RATIO = 2.0
STALL_MS = 100.0
UPLOAD, READ = "/bench/upload", "/bench/items/42"
AUTH = "Proxy-Authorization: Basic " + base64.b64encode(f"{AGENT}:{TOKEN}".encode()).decode()
ZEROS = bytes(MiB)
#: The hostile paths (the red team's full sizes) and the globs they almost match.
HOSTILE = [(glob, make(full)) for glob, make, _, full in GLOB_CASES]


# ---------------------------------------------------------------- the sink upstream

def _content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


async def _sink(port: int) -> None:
    """Answers every request with the bench upstream's response once its body is read and dropped, so that a 256 MiB
    body costs the upstream nothing (upstream_server.py buffers bodies: fine for small ones, quadratic for these)."""
    from upstream_server import RESPONSE

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                left = _content_length(head)
                while left > 0:
                    chunk = await reader.read(min(left, MiB))
                    if not chunk:
                        return
                    left -= len(chunk)
                writer.write(RESPONSE)
                await writer.drain()
                if b"\r\nconnection: close" in head.lower():
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, limit=MiB)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- bodies

def _zeros(total: int) -> Iterable[bytes]:
    return (ZEROS for _ in range(total // MiB))


def _gzip(chunks: Iterable[bytes]) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join(z.compress(c) for c in chunks) + z.flush()


@functools.cache
def _gzip_256() -> bytes:
    """256 MiB of zeros gzipped (~255 KB): the red team's gzip bomb, and a part of two others."""
    return _gzip(_zeros(256 * MiB))


def _brotli(chunks: Iterable[bytes]) -> bytes:
    import brotli

    c = brotli.Compressor(quality=5)  # 1 GiB of zeros in ~1.6 KB, in ~2 s (quality 11: ~1.7 KB in ~50 s)
    return b"".join(c.process(x) for x in chunks) + c.finish()


def _zstd(chunks: Iterable[bytes]) -> bytes:
    import zstandard

    c = zstandard.ZstdCompressor(level=19).compressobj()
    return b"".join(c.compress(x) for x in chunks) + c.flush()


@dataclass
class Case:
    name: str
    coding: str  # Content-Encoding ("" for none)
    decoded: int  # what the body decodes to
    build: Callable[[], list[bytes]]  # the body on the wire, in parts
    bomb: bool = True


CASES = [
    Case("brotli bomb (br)", "br", 1 << 30, lambda: [_brotli(_zeros(1 << 30))]),
    Case("gzip bomb", "gzip", 256 * MiB, lambda: [_gzip_256()]),
    # Over 320 KB on the wire, so the 200:1 ratio allows the whole 64 MiB: the most the proxy decodes.
    Case("gzip bomb, 2 members (64 MiB cap)", "gzip", 512 * MiB, lambda: [_gzip_256() * 2]),
    Case("gzip in gzip (gzip, gzip)", "gzip, gzip", 256 * MiB, lambda: [_gzip([_gzip_256()])]),
    Case("zstd bomb", "zstd", 1 << 30, lambda: [_zstd(_zeros(1 << 30))]),
    Case("plain 256 MiB body", "", 256 * MiB, lambda: list(_zeros(256 * MiB)), bomb=False),
]
#: A small body in each coding, sent before the baseline so every decoder is imported and the upload is allowed.
WARM: dict[str, Callable[[bytes], bytes]] = {"": bytes, "gzip": lambda b: _gzip([b]), "br": lambda b: _brotli([b]),
                                             "zstd": lambda b: _zstd([b])}


# ---------------------------------------------------------------- a client through the proxy

@dataclass
class Reply:
    status: int | None  # None: no response (the note says why)
    seconds: float
    note: str = ""
    decision: str = ""


def _request(upstream: int, method: str, path: str, headers: dict[str, str], length: int | None = None) -> bytes:
    lines = [f"{method} http://127.0.0.1:{upstream}{path} HTTP/1.1", f"Host: 127.0.0.1:{upstream}", AUTH,
             *(f"{k}: {v}" for k, v in headers.items())]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_reply(f: Any) -> tuple[int, str]:
    """Status and X-Goex-Decision of one response read from a socket file; its body is read and dropped."""
    status = int(f.readline().split()[1])
    length, decision = 0, ""
    while (line := f.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "x-goex-decision":
            decision = value.strip()
    f.read(length)
    return status, decision


def send(proxy: int, upstream: int, method: str, path: str, parts: Sequence[bytes] = (),
         headers: dict[str, str] | None = None, timeout: float = 120.0) -> Reply:
    """One request on a connection of its own (Connection: close): its status, decision and wall clock. A proxy that
    answers before reading the whole body, or closes the connection, is reported as such, not raised."""
    length = sum(len(p) for p in parts) if parts or method == "POST" else None
    head = _request(upstream, method, path, {"Connection": "close", **(headers or {})}, length)
    t0, sent, note = time.perf_counter(), 0, ""
    with socket.create_connection(("127.0.0.1", proxy), timeout=timeout) as s:
        try:
            s.sendall(head)
            for part in parts:
                s.sendall(part)
                sent += len(part)
        except OSError as exc:
            note = f"closed after {sent / MiB:,.1f} MiB of the body ({type(exc).__name__})"
        try:
            with s.makefile("rb") as f:
                status, decision = _read_reply(f)
        except (OSError, ValueError, IndexError) as exc:
            return Reply(None, time.perf_counter() - t0, note or f"no response ({type(exc).__name__})")
    return Reply(status, time.perf_counter() - t0, note, decision)


# ---------------------------------------------------------------- part 1: memory

def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS so far) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def dos_policy() -> dict[str, Any]:
    rules = [{"name": "bench uploads", "allow": {"host": "127.0.0.1", "methods": ["POST"], "path": UPLOAD}},
             {"name": "bench read", "allow": {"host": "127.0.0.1", "methods": ["GET", "HEAD"], "path": "/bench/**"}}]
    rules += [{"name": f"hostile glob {i}", "allow": {"host": "127.0.0.1", "methods": ["GET"], "path": glob}}
              for i, (glob, _) in enumerate(HOSTILE, 1)]
    return {"version": 1, "name": "bench-dos", "rules": rules}


def _warm(proxy: Proxy, upstream: int) -> None:
    for coding, encode in WARM.items():
        r = send(proxy.port, upstream, "POST", UPLOAD, [encode(b"warm " * 100)],
                 {"Content-Type": "application/octet-stream", **({"Content-Encoding": coding} if coding else {})})
        if r.status != 200 or r.decision != "allow":
            raise SystemExit(f"bench: {proxy.name} answered a small {coding or 'plain'} upload {r.status} "
                             f"({r.decision or r.note}); the dos policy should allow it")


def memory_case(bench: Bench, upstream: int, case: Case, parts: list[bytes]) -> dict[str, Any]:
    """One case against a fresh proxy: baseline RSS, the reply, peak RSS (VmHWM) and RSS after."""
    name = f"goex-mem{CASES.index(case)}"
    proxy = bench.proxies[name] = bench._start_goex(name, dos_policy())
    try:
        _warm(proxy, upstream)
        time.sleep(0.3)
        before = _memory(proxy.proc.pid)
        headers = {"Content-Type": "application/octet-stream", **({"Content-Encoding": case.coding}
                                                                   if case.coding else {})}
        reply = send(proxy.port, upstream, "POST", UPLOAD, parts, headers)
        time.sleep(0.3)  # the audit writer records the request after the response
        alive = proxy.proc.poll() is None
        after = _memory(proxy.proc.pid) if alive else {"VmRSS": 0, "VmHWM": 0}
    finally:
        bench.procs.stop(bench.proxies.pop(name).proc)
    wire = sum(len(p) for p in parts)
    growth = after["VmHWM"] - before["VmRSS"]
    ok = alive and (growth <= BOMB_GROWTH_MIB * MiB if case.bomb else growth <= PLAIN_RATIO * wire)
    return {"case": case.name, "coding": case.coding, "wire_bytes": wire, "decoded_bytes": case.decoded,
            "status": reply.status, "decision": reply.decision, "note": reply.note if alive else "proxy died",
            "seconds": reply.seconds, "baseline_mib": before["VmRSS"] / MiB, "hwm_before_mib": before["VmHWM"] / MiB,
            "peak_mib": after["VmHWM"] / MiB, "growth_mib": growth / MiB, "after_mib": after["VmRSS"] / MiB,
            "ratio": growth / wire, "bomb": case.bomb, "pass": ok}


def memory_part(bench: Bench, upstream: int, say: Callable[..., None]) -> list[dict[str, Any]]:
    out = []
    for case in CASES:
        t0 = time.perf_counter()
        parts = case.build()
        say(f"[dos] {case.name}: {sum(map(len, parts)):,} bytes on the wire (built in {time.perf_counter() - t0:.1f}"
            " s), fresh proxy...", flush=True)
        out.append(memory_case(bench, upstream, case, parts))
        r = out[-1]
        say(f"[dos]   {r['status']} {r['decision']} in {r['seconds']:.2f} s, peak RSS {r['peak_mib']:.0f} MiB "
            f"(+{r['growth_mib']:.0f}) {r['note']}", flush=True)
    return out


# ---------------------------------------------------------------- part 2: stall

@dataclass
class Steady:
    """Sequential GETs on one keep-alive connection, in a thread, until stopped: (start, end) of each, and errors."""

    proxy: int
    upstream: int
    spans: list[tuple[float, float]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        request = _request(self.upstream, "GET", READ, {})
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.proxy), timeout=60) as s, s.makefile("rb") as f:
                    while not self.stop.is_set():
                        t0 = time.perf_counter()
                        s.sendall(request)
                        status, _ = _read_reply(f)
                        self.spans.append((t0, time.perf_counter()))
                        if status != 200:
                            self.errors[f"status {status}"] = self.errors.get(f"status {status}", 0) + 1
            except (OSError, ValueError, IndexError) as exc:
                self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1


def _latency(spans: list[tuple[float, float]]) -> dict[str, float]:
    ms = sorted((b - a) * 1000 for a, b in spans)
    return {"n": len(ms), "p50": percentile(ms, 50), "p99": percentile(ms, 99), "max": ms[-1] if ms else float("nan")}


def _attack(proxy: int, upstream: int, seconds: float, replies: dict[str, list[Reply]]) -> None:
    """The hostile paths one after the other, each on a new connection, for about `seconds`."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _, path in HOSTILE:
            replies[path].append(send(proxy, upstream, "GET", path, timeout=60))


def _loop_cpu(proxy: Proxy, upstream: int, path: str, n: int = 30) -> float:
    """Milliseconds of the proxy's main (event loop) thread per request of `path`, each on a new connection, sent
    alone: an upper bound on how long one such request holds the loop."""
    pid = proxy.proc.pid
    send(proxy.port, upstream, "GET", path, timeout=60)
    before = thread_cpu_seconds(pid).get(pid, float("nan"))
    for _ in range(n):
        send(proxy.port, upstream, "GET", path, timeout=60)
    return (thread_cpu_seconds(pid).get(pid, float("nan")) - before) / n * 1000


def _overlapping(spans: list[tuple[float, float]], a: float, b: float) -> list[tuple[float, float]]:
    return [s for s in spans if s[0] < b and s[1] > a]


def stall_part(bench: Bench, upstream: int, rounds: int, window: float,
               say: Callable[..., None]) -> dict[str, Any]:
    """After a warm-up window, quiet and attack windows alternated while the steady client runs throughout."""
    proxy = bench.proxies["goex-stall"] = bench._start_goex("goex-stall", dos_policy())
    steady = Steady(proxy.port, upstream)
    thread = threading.Thread(target=steady.run, daemon=True)
    hostile: dict[str, list[Reply]] = {path: [] for _, path in HOSTILE}
    quiet_windows, attack_windows = [], []
    say(f"[dos] stall: event-loop CPU per request alone, then {rounds} rounds of {window:g} s quiet, {window:g} s of "
        "hostile paths...", flush=True)
    try:
        loop_ms = {path: _loop_cpu(proxy, upstream, path) for path in (READ, *(p for _, p in HOSTILE))}
        thread.start()
        time.sleep(window / 2)  # warm-up: not counted
        for _ in range(rounds):
            t0 = time.perf_counter()
            time.sleep(window)
            t1 = time.perf_counter()
            _attack(proxy.port, upstream, window, hostile)
            quiet_windows.append((t0, t1))
            attack_windows.append((t1, time.perf_counter()))
    finally:
        steady.stop.set()
        thread.join(timeout=70)
        bench.procs.stop(bench.proxies.pop("goex-stall").proc)
    quiet = [s for w in quiet_windows for s in steady.spans if w[0] <= s[0] and s[1] <= w[1]]
    attack = [s for w in attack_windows for s in _overlapping(steady.spans, *w)]
    q, a = _latency(quiet), _latency(attack)
    per_round = [_latency(_overlapping(steady.spans, *w))["max"] for w in attack_windows]
    quiet_round = [_latency([s for s in steady.spans if w[0] <= s[0] and s[1] <= w[1]])["max"] for w in quiet_windows]
    added = median([m - q["p50"] for m in per_round])
    return {"quiet": q, "attack": a, "added_max_ms": added, "worst_added_ms": a["max"] - q["p50"],
            "attack_max_per_round_ms": per_round, "quiet_max_per_round_ms": quiet_round,
            "steady_errors": steady.errors, "rounds": rounds, "window_s": window, "pass": added <= STALL_MS,
            "steady_loop_ms": loop_ms[READ],
            "hostile": [{**_hostile_summary(glob, path, hostile[path]), "loop_ms": loop_ms[path]}
                        for glob, path in HOSTILE]}


def _hostile_summary(glob: str, path: str, replies: list[Reply]) -> dict[str, Any]:
    ms = sorted(r.seconds * 1000 for r in replies)
    statuses: dict[str, int] = {}
    for r in replies:
        key = str(r.status) if r.status is not None else (r.note or "none")
        statuses[key] = statuses.get(key, 0) + 1
    return {"glob": glob, "path_bytes": len(path), "n": len(replies), "statuses": statuses,
            "p50_ms": median(ms), "max_ms": ms[-1] if ms else float("nan")}


# ---------------------------------------------------------------- report

def _memory_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        goal = f"<= +{BOMB_GROWTH_MIB:.0f} MiB" if r["bomb"] else f"<= {PLAIN_RATIO:g}x body"
        status = f"{r['status'] or '-'} {r['decision']}".strip()
        out.append([r["case"], f"{r['wire_bytes']:,}", f"{r['decoded_bytes'] / MiB:,.0f}", status,
                    fmt(r["seconds"], 2), fmt(r["baseline_mib"], 0), fmt(r["peak_mib"], 0),
                    f"+{r['growth_mib']:,.0f}", f"{r['ratio']:,.2f}x" if r["ratio"] < 1000 else f"{r['ratio']:,.0f}x",
                    fmt(r["after_mib"], 0), goal, "PASS" if r["pass"] else "FAIL"])
    return table(["request body", "bytes on wire", "decoded MiB", "status", "seconds", "baseline MiB", "peak MiB",
                  "peak - base", "/ wire", "after MiB", "goal", "result"], out)


def _stall_table(s: dict[str, Any]) -> str:
    q, a = s["quiet"], s["attack"]
    loop = fmt(s["steady_loop_ms"], 1)
    rows = [["steady GETs, quiet", f"{q['n']:,}", fmt(q["p50"], 2), fmt(q["p99"], 2), fmt(q["max"], 1), loop, "", "",
             ""],
            ["steady GETs, under attack", f"{a['n']:,}", fmt(a["p50"], 2), fmt(a["p99"], 2), fmt(a["max"], 1), loop, "",
             f"+{s['added_max_ms']:.1f} ms <= {STALL_MS:.0f} ms", "PASS" if s["pass"] else "FAIL"]]
    for h in s["hostile"]:
        statuses = ", ".join(f"{k} x{v}" for k, v in h["statuses"].items())
        rows.append([f"hostile {h['path_bytes']:,}-byte path ({h['glob']})", f"{h['n']:,}", fmt(h["p50_ms"], 2), "",
                     fmt(h["max_ms"], 1), fmt(h["loop_ms"], 1), statuses, "", ""])
    return table(["client", "requests", "p50 ms", "p99 ms", "max ms", "loop CPU ms/req", "status",
                  "added (median of rounds)", "result"], rows)


def report(memory: list[dict[str, Any]], stall: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    bombs, plain = [r for r in memory if r["bomb"]], [r for r in memory if not r["bomb"]]
    per_round = ", ".join(f"{x:.1f}" for x in stall["attack_max_per_round_ms"])
    quiet_round = ", ".join(f"{x:.1f}" for x in stall["quiet_max_per_round_ms"])
    lines = [
        "== Memory: one POST per fresh goex-proxy, peak RSS (VmHWM) against the RSS before it (after one small POST "
        "in every coding) ==",
        _memory_table(memory),
        "status: the proxy's answer and X-Goex-Decision (403 deny: refused before policy; 200 allow: forwarded; 413, "
        "431: refused by its size limits). / wire: growth over the bytes sent.",
        "",
        f"== Stall: a steady client (1 keep-alive connection, sequential GETs) while another sends hostile paths, "
        f"{stall['rounds']} rounds of {stall['window_s']:g} s quiet / {stall['window_s']:g} s attack ==",
        _stall_table(stall),
        "loop CPU: the proxy's main-thread CPU per request, each on a new connection, sent alone before the rounds (an "
        "upper bound on how long one request holds the event loop).",
        f"added: per round, the steady client's max under attack minus its quiet p50; the median of rounds is held "
        f"against the goal (one scheduling hiccup on a shared machine is not a stall; a stall the attack causes shows "
        f"in every round). Max per round under attack: {per_round} ms; quiet: {quiet_round} ms; worst added "
        f"{stall['worst_added_ms']:+.1f} ms. Steady client errors: {stall['steady_errors'] or 'none'}.",
    ]
    results = {"memory": memory, "stall": stall, "bomb_pass": all(r["pass"] for r in bombs),
               "plain_pass": all(r["pass"] for r in plain), "stall_pass": stall["pass"],
               "worst_bomb_growth_mib": max(r["growth_mib"] for r in bombs),
               "plain": plain[0] if plain else None}
    results["pass"] = results["bomb_pass"] and results["plain_pass"] and results["stall_pass"]
    return "\n".join(lines), results


def run(procs: Processes, *, rounds: int = 5, window: float = 1.5, say: Callable[..., None] = print,
        keep: bool = False) -> tuple[str, dict[str, Any]]:
    """Both parts against one sink upstream; the text and the numbers."""
    import trustme

    workdir = Path(tempfile.mkdtemp(prefix="goex-bench-dos-"))
    bench = Bench(procs, workdir)
    try:
        bench.upstream_ca = workdir / "upstream-ca.pem"  # the bench config names one; the sink is plain HTTP
        trustme.CA().cert_pem.write_to_path(str(bench.upstream_ca))
        upstream = free_port()
        bench.upstream = procs.start([PYTHON, str(BENCH_DIR / "dos_bench.py"), "--sink", str(upstream)],
                                     log=workdir / "sink.log")
        wait_port(upstream, bench.upstream, what="sink upstream")
        memory = memory_part(bench, upstream, say)
        stall = stall_part(bench, upstream, rounds, window, say)
        return report(memory, stall)
    except SystemExit:
        keep = True  # keep the logs of a failed run
        raise
    finally:
        bench.close(keep, "dos bench")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sink", type=int, metavar="PORT", help="run only the sink upstream on 127.0.0.1:PORT")
    p.add_argument("--rounds", type=int, default=5, help="quiet/attack rounds of the stall part (default 5)")
    p.add_argument("--window", type=float, default=1.5, help="seconds per quiet or attack window (default 1.5)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (proxy logs, configs)")
    args = p.parse_args()
    if args.sink:
        asyncio.run(_sink(args.sink))
        return
    procs = Processes()
    try:
        print(run(procs, rounds=args.rounds, window=args.window, keep=args.keep)[0])
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
