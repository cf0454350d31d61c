"""Target 1: throughput and added latency of `goex-proxy run` against bare `mitmdump`, same upstream, same client.

Everything runs on 127.0.0.1 with free ports: one upstream process (HTTP and HTTPS listeners, certificate for IP
127.0.0.1 from a trustme CA), bare mitmdump, goex-proxy (a 24-rule policy whose allowing rule matches 127.0.0.1,
audit log on), and the load generator as a separate process. Both proxies run at the same time (idle when not
measured) and are measured alternately: bare, goex, bare, goex, ...
"""

from __future__ import annotations

import base64
import json
import os
import re
import resource
import shutil
import socket
import sqlite3
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    PYTHON,
    Processes,
    cpu_seconds,
    fmt,
    free_port,
    median,
    signed,
    table,
    thread_cpu_seconds,
    tool,
    tree_cpu_seconds,
    wait_port,
)
from policies_gen import throughput_policy, to_yaml

TARGET_RATIO = 0.90
AGENT, TOKEN = "bench", "bench-agent-token"
PATH = "/bench/items/42"


@dataclass
class Proxy:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    ca: Path  # the CA the client trusts for intercepted HTTPS


@dataclass
class Run:
    proxy: str
    scheme: str
    conns: int
    rps: float
    p50_ms: float
    p99_ms: float
    proxy_cpu_s: float
    upstream_cpu_s: float
    loadgen_cpu_s: float
    duration_s: float
    requests: int
    errors: dict[str, int] = field(default_factory=dict)
    #: CPU seconds of the proxy's main thread and of all its other threads over the window
    main_thread_cpu_s: float = float("nan")
    other_threads_cpu_s: float = float("nan")
    #: CPU seconds of the proxy and every process it started (`run --workers`' workers) over the window
    proxy_tree_cpu_s: float = float("nan")

    @property
    def cores_busy(self) -> float:
        """How many cores the proxy (all its processes), the upstream and the load generator kept busy."""
        return (self.proxy_tree_cpu_s + self.upstream_cpu_s + self.loadgen_cpu_s) / self.duration_s

    @property
    def cpu_us_per_req(self) -> float:
        """The proxy's CPU a request: every process it started too (the audit writer's, workers), where known."""
        spent = self.proxy_tree_cpu_s if self.proxy_tree_cpu_s == self.proxy_tree_cpu_s else self.proxy_cpu_s
        return spent / self.requests * 1e6 if self.requests else float("nan")


class Bench:
    def __init__(self, procs: Processes, workdir: Path, loadgen: str = "python", verbose: bool = False) -> None:
        self.procs = procs
        self.dir = workdir
        self.loadgen = loadgen
        self.verbose = verbose
        self.proxies: dict[str, Proxy] = {}
        self.notes: list[str] = []
        #: host names both proxies send to the upstream's plain-HTTP listener (goex: `upstream.routes`; mitmdump:
        #: `map_remote`), so that a request can name a host an undo pack knows
        self.routed_hosts: tuple[str, ...] = ()

    def close(self, keep: bool, what: str = "bench") -> None:
        """Stop every process this bench started; keep its directory (logs, configs) if asked, else remove it."""
        for p in list(self.proxies.values()):
            self.procs.stop(p.proc)
        if hasattr(self, "upstream"):
            self.procs.stop(self.upstream)
        if keep:
            print(f"({what} files kept in {self.dir})")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---------------------------------------------------------------- setup
    def setup(self, only: str | None = None, policy_doc: dict[str, Any] | None = None) -> None:
        """The upstream, then both proxies (or `only` "goex", "bare" or "upstream"); `policy_doc` replaces goex's
        throughput policy."""
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        self.upstream_ca = self.dir / "upstream-ca.pem"
        ca.cert_pem.write_to_path(str(self.upstream_ca))
        key, chain = self.dir / "upstream-key.pem", self.dir / "upstream-cert.pem"
        cert.private_key_pem.write_to_path(str(key))
        chain.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))

        self.http_port, self.https_port = free_port(), free_port()
        up = self.procs.start([PYTHON, str(BENCH_DIR / "upstream_server.py"), "--http-port", str(self.http_port),
                               "--https-port", str(self.https_port), "--cert", str(chain), "--key", str(key)],
                              log=self.dir / "upstream.log")
        wait_port(self.http_port, up, what="upstream")
        wait_port(self.https_port, up, what="upstream (TLS)")
        self.upstream = up

        if only in (None, "goex"):
            self.proxies["goex-proxy"] = self._start_goex(policy_doc=policy_doc)
        if only in (None, "bare"):
            self.proxies["mitmdump"] = self._start_bare()
        for p in self.proxies.values():
            self._check(p)

    def _start_goex(self, name: str = "goex-proxy", policy_doc: dict[str, Any] | None = None,
                    config_lines: str = "", workers: int = 1) -> Proxy:
        """A `goex-proxy run` in a state directory of its own; `config_lines` are added to the bench config (the
        undo preimage bench runs two, with and without undo rules). The first one's home is `goex-home`."""
        home = self.dir / ("goex-home" if name == "goex-proxy" else f"{name}-home")
        env = {**os.environ, "GOEX_PROXY_HOME": str(home)}
        subprocess.run([tool("goex-proxy"), "init"], env=env, check=True, stdout=subprocess.DEVNULL)
        policy = home / "bench-policy.yaml"
        policy.write_text(to_yaml(policy_doc or throughput_policy("127.0.0.1")), encoding="utf-8")
        port = free_port()
        config = home / "config.yaml"
        self._write_goex_config(config, port, policy, config_lines)
        if name == "goex-proxy":
            self.goex_db = home / "audit.db"
            self.goex_config = config
        proc = self.procs.start([tool("goex-proxy"), "run", "--config", str(config), "--workers", str(workers)],
                                env=env, log=self.dir / f"{name}.log")
        wait_port(port, proc, what=f"{name} run")
        return Proxy(name, port, proc, home / "mitmproxy-ca-cert.pem")

    def _write_goex_config(self, config: Path, port: int, policy: Path, lines: str = "") -> None:
        """The bench config; upstream is 127.0.0.1, so private-network blocking is turned off if the config has it."""
        from goex_proxy.config import load_config
        from goex_proxy.errors import ConfigError

        routes = ", ".join(f"{json.dumps(h)}: {json.dumps(f'http://127.0.0.1:{self.http_port}')}"
                           for h in self.routed_hosts)
        if routes:
            routes = f", routes: {{{routes}}}"

        def text(extra: str) -> str:
            return (f"version: 1\nlisten: 127.0.0.1:{port}\nagents:\n  {AGENT}: {{token: {json.dumps(TOKEN)}}}\n"
                    f"policies: [{json.dumps(str(policy))}]\naudit: {{db: audit.db}}\n"
                    f"upstream: {{extra_ca: [{json.dumps(str(self.upstream_ca))}]{extra}{routes}}}\n{lines}")

        for extra in (", block_private_networks: false", ""):
            config.write_text(text(extra), encoding="utf-8")
            try:
                load_config(config)
                return
            except ConfigError as exc:
                if any("block_private_networks" in str(p) for p in exc.problems):
                    continue
                raise
        raise SystemExit(f"bench: goex-proxy rejects the bench config {config}")

    def _start_bare(self) -> Proxy:
        # Its own confdir (mitmdump would read goex-proxy's config.yaml as its options), with the same CA files.
        conf = self.dir / "mitmdump-conf"
        conf.mkdir()
        home = self.dir / "goex-home"
        if home.exists():
            for f in home.glob("mitmproxy-*"):
                shutil.copy2(f, conf / f.name)
        port = free_port()
        routes = [x for h in self.routed_hosts for x in
                  ("--map-remote", f"|//{re.escape(h)}(:80)?/|//127.0.0.1:{self.http_port}/")]
        proc = self.procs.start([tool("mitmdump"), "-q", "--listen-host", "127.0.0.1", "-p", str(port),
                                 "--set", f"confdir={conf}",
                                 "--set", f"ssl_verify_upstream_trusted_ca={self.upstream_ca}", *routes],
                                log=self.dir / "mitmdump.log")
        wait_port(port, proc, what="mitmdump")
        ca = conf / "mitmproxy-ca-cert.pem"
        deadline = time.monotonic() + 10
        while not ca.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return Proxy("mitmdump", port, proc, ca)

    def _check(self, proxy: Proxy) -> None:
        """One request per scheme: 200 with the upstream's body; goex-proxy must have decided `allow`."""
        auth = "Proxy-Authorization: Basic " + base64.b64encode(f"{AGENT}:{TOKEN}".encode()).decode()
        for scheme in ("http", "https"):
            port = self.http_port if scheme == "http" else self.https_port
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
                if scheme == "https":
                    connect = f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n\r\n"
                    raw.sendall(connect.encode())
                    head = _read_head(raw)
                    if b" 200" not in head.split(b"\r\n")[0]:
                        raise SystemExit(f"bench: {proxy.name} refused CONNECT: {head[:200]!r}")
                    ctx = ssl.create_default_context(cafile=str(proxy.ca))
                    sock: socket.socket = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                    sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                else:
                    sock = raw
                    sock.sendall(f"GET http://127.0.0.1:{port}{PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n"
                                 "Connection: close\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            status = data.split(b"\r\n", 1)[0]
            if b" 200" not in status or b"bench upstream" not in data:
                raise SystemExit(f"bench: {proxy.name} {scheme} check failed: {data[:600]!r}")
            if proxy.name.startswith("goex") and b"x-goex-decision: allow" not in data.lower():
                raise SystemExit(f"bench: goex-proxy did not mark the {scheme} response as allowed: {data[:600]!r}")

    # ---------------------------------------------------------------- one measurement
    def measure(self, proxy_name: str | None, scheme: str, conns: int, duration: float,
                request: Sequence[str] = ()) -> Run:
        """One load generator run; `request` adds its options (`--method PUT --body ...`; default GET of PATH)."""
        proxy = self.proxies[proxy_name] if proxy_name else None
        if self.loadgen == "hey" and proxy is not None:
            return self._measure_hey(proxy, scheme, conns, duration)
        port = self.http_port if scheme == "http" else self.https_port
        argv = [PYTHON, str(BENCH_DIR / "loadgen.py"), "--scheme", scheme, "--target-port", str(port),
                "--path", PATH, "--conns", str(conns), "--duration", str(duration), *request]
        if proxy is not None:
            argv += ["--proxy-port", str(proxy.port), "--proxy-auth", f"{AGENT}:{TOKEN}", "--ca", str(proxy.ca)]
        else:
            argv += ["--ca", str(self.upstream_ca)]
        pid = proxy.proc.pid if proxy else None
        lg = self.procs.start(argv, stdout=subprocess.PIPE, log=self.dir / "loadgen.log")
        assert lg.stdout is not None
        c0 = c1 = u0 = u1 = m0 = m1 = float("nan")  # m: the proxy's whole process tree
        t0: dict[int, float] = {}
        t1: dict[int, float] = {}
        result: dict[str, Any] = {}
        for raw in lg.stdout:
            line = raw.decode().strip()
            if line == "window-start":
                m0 = tree_cpu_seconds(pid) if pid else 0.0
                c0, u0 = (cpu_seconds(pid) if pid else float("nan")), cpu_seconds(self.upstream.pid)
                t0 = thread_cpu_seconds(pid) if pid else {}
            elif line == "window-end":
                m1 = tree_cpu_seconds(pid) if pid else 0.0
                c1, u1 = (cpu_seconds(pid) if pid else float("nan")), cpu_seconds(self.upstream.pid)
                t1 = thread_cpu_seconds(pid) if pid else {}
            elif line.startswith("{"):
                result = json.loads(line)
        self.procs.stop(lg)
        if "fatal" in result or not result:
            why = ""
            for p in [*self.proxies.values(), Proxy("upstream", 0, self.upstream, Path())]:
                if p.proc.poll() is not None:
                    log = Path(getattr(p.proc, "bench_log", "") or "/nonexistent")
                    tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
                    why += f"\n{p.name} (pid {p.proc.pid}) exited with code {p.proc.returncode}; its output ends:\n{tail}"
            raise SystemExit(f"bench: load generator failed against {proxy_name or 'upstream'} ({scheme}): "
                             f"{result or 'no result'}{why}")
        run = Run(proxy_name or "direct", scheme, conns, result["rps"], result["p50_ms"], result["p99_ms"],
                  c1 - c0, u1 - u0, result["loadgen_cpu_s"], duration, result["requests"], result["errors"])
        run.proxy_tree_cpu_s = m1 - m0
        if pid and t0 and t1:
            run.main_thread_cpu_s = t1.get(pid, 0.0) - t0.get(pid, 0.0)
            run.other_threads_cpu_s = sum(v - t0.get(k, 0.0) for k, v in t1.items() if k != pid)
        if self.verbose:
            print(f"  {run.proxy:10} {scheme:5} c={conns:<2} {run.rps:8.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
                  f"p99 {run.p99_ms:6.2f} ms  proxy cpu {run.cpu_us_per_req:6.0f} us/req  errors {run.errors or 0}",
                  flush=True)
        return run

    def _measure_hey(self, proxy: Proxy, scheme: str, conns: int, duration: float) -> Run:
        hey = shutil.which("hey")
        if not hey:
            raise SystemExit("bench: --loadgen hey needs `hey` (apt-get install hey)")
        port = self.http_port if scheme == "http" else self.https_port
        out = self.dir / "hey.csv"
        argv = [hey, "-z", f"{duration}s", "-c", str(conns), "-x", f"http://{AGENT}:{TOKEN}@127.0.0.1:{proxy.port}",
                "-o", "csv", f"{scheme}://127.0.0.1:{port}{PATH}"]
        pid = proxy.proc.pid
        c0, u0, th0, t0 = cpu_seconds(pid), cpu_seconds(self.upstream.pid), thread_cpu_seconds(pid), time.monotonic()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out, "wb") as f:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.PIPE, timeout=duration + 60)
        elapsed = time.monotonic() - t0
        c1, u1, th1 = cpu_seconds(pid), cpu_seconds(self.upstream.pid), thread_cpu_seconds(pid)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        hey_cpu = (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) * duration / elapsed
        lat: list[float] = []
        errors: dict[str, int] = {}
        for line in out.read_text().splitlines()[1:]:
            parts = line.split(",")
            if len(parts) < 7:
                continue
            if parts[6].startswith("2"):
                lat.append(float(parts[0]) * 1000)
            else:
                errors[f"status {parts[6]}"] = errors.get(f"status {parts[6]}", 0) + 1
        if proc.returncode != 0:
            errors["hey exit"] = proc.returncode
        lat.sort()
        from common import percentile
        run = Run(proxy.name, scheme, conns, len(lat) / duration, percentile(lat, 50), percentile(lat, 99),
                  (c1 - c0) * duration / elapsed, (u1 - u0) * duration / elapsed, hey_cpu, duration, len(lat), errors)
        # hey's timing includes connection setup, so CPU is scaled from the whole run to the measured duration
        run.main_thread_cpu_s = (th1.get(pid, 0.0) - th0.get(pid, 0.0)) * duration / elapsed
        run.other_threads_cpu_s = sum(v - th0.get(k, 0.0) for k, v in th1.items() if k != pid) * duration / elapsed
        if self.verbose:
            print(f"  {run.proxy:10} {scheme:5} c={conns:<2} {run.rps:8.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
                  f"p99 {run.p99_ms:6.2f} ms  (hey)  errors {errors or 0}", flush=True)
        return run

    def audit_rows(self) -> int:
        if not hasattr(self, "goex_db") or not self.goex_db.exists():
            return 0
        conn = sqlite3.connect(f"file:{self.goex_db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
        finally:
            conn.close()


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def run(procs: Processes, *, rounds: int, duration: float, conns: int = 10, latency_rounds: int | None = None,
        latency_duration: float | None = None, loadgen: str = "python", verbose: bool = True,
        keep: bool = False) -> tuple[str, dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="goex-bench-"))
    bench = Bench(procs, workdir, loadgen=loadgen, verbose=verbose)
    try:
        return _run(bench, rounds, duration, conns, latency_rounds if latency_rounds is not None else rounds,
                    latency_duration or max(1.0, duration / 2))
    except SystemExit:
        keep = True  # keep the logs of a failed run
        raise
    finally:
        bench.close(keep)


def _run(bench: Bench, rounds: int, duration: float, conns: int, lat_rounds: int,
         lat_duration: float) -> tuple[str, dict[str, Any]]:
    bench.setup()
    rows_before = bench.audit_rows()
    say = print if bench.verbose else (lambda *a, **k: None)
    order = ["mitmdump", "goex-proxy"]
    runs: list[Run] = []
    ceilings: dict[str, Run] = {}
    for scheme in ("http", "https"):
        say(f"[throughput] {scheme}: load generator alone against the upstream (its ceiling)", flush=True)
        ceilings[scheme] = bench.measure(None, scheme, conns, min(duration, 2.0))
        say(f"[throughput] {scheme}: warm-up, then {rounds} alternating rounds of {duration:g}s at {conns} connections",
            flush=True)
        for name in order:
            bench.measure(name, scheme, conns, min(duration, 1.0))
        for _ in range(rounds):
            for name in order:
                runs.append(bench.measure(name, scheme, conns, duration))
        if lat_rounds:
            say(f"[throughput] {scheme}: {lat_rounds} alternating rounds of {lat_duration:g}s at 1 connection "
                "(latency with no queueing)", flush=True)
            for _ in range(lat_rounds):
                for name in order:
                    runs.append(bench.measure(name, scheme, 1, lat_duration))
    audit_written = bench.audit_rows() - rows_before
    goex_requests = None  # warm-up and check requests are recorded too; compared loosely below
    bad = [r for r in runs if r.errors]
    return _report(bench, runs, ceilings, conns, rounds, duration, audit_written, bad, goex_requests)


def _report(bench: Bench, runs: list[Run], ceilings: dict[str, Run], conns: int, rounds: int, duration: float,
            audit_written: int, bad: list[Run], _goex_requests: Any) -> tuple[str, dict[str, Any]]:
    def pick(proxy: str, scheme: str, c: int) -> list[Run]:
        return [r for r in runs if r.proxy == proxy and r.scheme == scheme and r.conns == c]

    main_rows, summary_rows, results = [], [], {}
    for scheme in ("http", "https"):
        ceil = ceilings[scheme]
        main_rows.append([f"{scheme}", "client alone, no proxy", fmt(ceil.rps, 0), fmt(ceil.p50_ms, 2),
                          fmt(ceil.p99_ms, 2), "-", "-", "-", fmt(ceil.upstream_cpu_s / ceil.duration_s * 100, 0, "%"),
                          fmt(ceil.loadgen_cpu_s / ceil.duration_s * 100, 0, "%")])
        med: dict[str, dict[str, float]] = {}
        for name in ("mitmdump", "goex-proxy"):
            rs = pick(name, scheme, conns)
            m = {"rps": median([r.rps for r in rs]), "p50": median([r.p50_ms for r in rs]),
                 "p99": median([r.p99_ms for r in rs]), "cpu": median([r.cpu_us_per_req for r in rs]),
                 "main": median([r.main_thread_cpu_s / r.requests * 1e6 if r.requests else float("nan") for r in rs]),
                 "busy": median([r.main_thread_cpu_s / r.duration_s * 100 for r in rs]),
                 "up": median([r.upstream_cpu_s / r.duration_s * 100 for r in rs]),
                 "lg": median([r.loadgen_cpu_s / r.duration_s * 100 for r in rs])}
            one = pick(name, scheme, 1)
            m["p50_1"] = median([r.p50_ms for r in one])
            m["p99_1"] = median([r.p99_ms for r in one])
            med[name] = m
            main_rows.append([scheme, name, fmt(m["rps"], 0), fmt(m["p50"], 2), fmt(m["p99"], 2), fmt(m["cpu"], 0),
                              fmt(m["main"], 0), fmt(m["busy"], 0, "%"), fmt(m["up"], 0, "%"), fmt(m["lg"], 0, "%")])
        bare, goex = med["mitmdump"], med["goex-proxy"]
        pair = [g.rps / b.rps for b, g in zip(pick("mitmdump", scheme, conns), pick("goex-proxy", scheme, conns),
                                                    strict=True)]
        ratio = goex["rps"] / bare["rps"] if bare["rps"] else float("nan")
        ok = ratio >= TARGET_RATIO
        results[scheme] = {"ratio": ratio, "pass": ok, "bare_rps": bare["rps"], "goex_rps": goex["rps"],
                           "added_p50_ms": goex["p50"] - bare["p50"], "added_p99_ms": goex["p99"] - bare["p99"],
                           "added_p50_1conn_ms": goex["p50_1"] - bare["p50_1"],
                           "added_p99_1conn_ms": goex["p99_1"] - bare["p99_1"],
                           "cpu_us_per_req": {"mitmdump": bare["cpu"], "goex-proxy": goex["cpu"]}}
        summary_rows.append([scheme, f"{ratio:.3f}", f"{min(pair):.2f}-{max(pair):.2f}" if pair else "n/a",
                             f">= {TARGET_RATIO:.2f}", "PASS" if ok else "FAIL",
                             f"{signed(goex['p50'] - bare['p50'], 2)} / {signed(goex['p99'] - bare['p99'], 2)}",
                             f"{signed(goex['p50_1'] - bare['p50_1'], 3)} / {signed(goex['p99_1'] - bare['p99_1'], 3)}",
                             f"{fmt(bare['p50_1'], 3)} / {fmt(goex['p50_1'], 3)}",
                             signed(goex["cpu"] - bare["cpu"], 0)])
    lines = [
        f"== Throughput: bare mitmdump vs goex-proxy run (keep-alive, {conns} connections, {rounds} alternating "
        f"rounds x {duration:g}s each, medians) ==",
        f"Machine: {os.cpu_count()} cores shared by the proxy, the upstream and the load generator "
        f"(load generator: {'hey' if bench.loadgen == 'hey' else 'bench/loadgen.py, Python asyncio'}).",
        "goex-proxy: 24-rule policy (1 CEL rule checked on every request), audit log on "
        f"({audit_written:,} rows written during the benchmark).",
        table(["scheme", "proxy", "req/s", "p50 ms", "p99 ms", "proxy CPU us/req", "main thread us/req",
               "main thread busy", "upstream CPU", "client CPU"], main_rows),
        "(CPU columns: per request, or % of one core over the timed window; a proxy whose main thread is near 100% "
        "busy is CPU-bound on one core.)",
        "",
        table(["scheme", "ratio goex/bare req/s", "per-round ratios", "target", "result",
               f"added ms p50/p99 ({conns} conns)", "added ms p50/p99 (1 conn)", "1-conn p50 ms bare/goex",
               "added CPU us/req"], summary_rows),
    ]
    if bad:
        lines.append("")
        lines.append("Errors during measurement (these runs are suspect):")
        for r in bad:
            lines.append(f"  {r.proxy} {r.scheme} c={r.conns}: {r.errors}")
    return "\n".join(lines), results


# ---------------------------------------------------------------- side by side: kinds of request, two trees
#: What `--requests` names: loadgen options (a body file is written once). The policy allows each (throughput policy
#: plus PUT /bench/items/*); POST and PUT get the shipped undo packs' work (the REST pack classifies them).
ITEM = '{"name": "widget 42", "color": "blue", "tags": ["bench"], "count": 43}'
REQUEST_KINDS: dict[str, tuple[str, ...]] = {
    "get": (),
    "post": ("--method", "POST", "--path", "/bench/items", "--body", ITEM),
    "put": ("--method", "PUT", "--body", ITEM),
    "post10m": ("--method", "POST", "--path", "/bench/items", "--warmup", "1"),  # + --body-file: 10 MB of JSON
}
#: Connections for a kind whose requests are large (10 keep-alive connections of 10 MB bodies only queue).
CONNS_OF = {"post10m": 2}


def big_body(path: Path, size: int = 10 * 1024 * 1024) -> Path:
    """A JSON object of about `size` bytes that the POST rule allows (it has a `name`)."""
    filler = "x" * (size - 64)
    path.write_text(json.dumps({"name": "widget 42", "data": filler}), encoding="utf-8")
    return path


def _from_tree(tree: Path | None) -> dict[str, str]:
    """The environment that runs `goex-proxy` from `tree` (a `goex_proxy` package laid out as installed) first."""
    return {"PYTHONPATH": str(tree)} if tree is not None else {}


def side_by_side(procs: Processes, kinds: Sequence[str], schemes: Sequence[str], rounds: int, duration: float,
                 conns: int, compare: Path | None, tree: Path | None = None) -> tuple[str, dict[str, Any]]:
    """Bare mitmdump, goex-proxy as installed (or from `tree`) and, with `compare`, goex-proxy from that directory
    (each a `goex_proxy` package laid out as installed), measured in rotating order per round; ratios to bare per
    round, medians of rounds."""
    from preimage_bench import preimage_policy

    bench = Bench(procs, Path(tempfile.mkdtemp(prefix="goex-bench-sbs-")), verbose=True)
    options = dict(REQUEST_KINDS)
    options["post10m"] = (*REQUEST_KINDS["post10m"], "--body-file", str(big_body(bench.dir / "body-10m.json")))
    try:
        saved = os.environ.get("PYTHONPATH")
        try:
            os.environ.update(_from_tree(tree))
            bench.setup(policy_doc=preimage_policy())
            if compare is not None:
                os.environ["PYTHONPATH"] = str(compare)
                bench.proxies["goex-before"] = bench._start_goex("goex-before", preimage_policy())
                bench._check(bench.proxies["goex-before"])
        finally:
            os.environ.pop("PYTHONPATH", None) if saved is None else os.environ.__setitem__("PYTHONPATH", saved)
        names = list(bench.proxies)
        runs: dict[tuple[str, str, str], list[Run]] = {}
        for kind in kinds:
            for scheme in schemes:
                c = CONNS_OF.get(kind, conns)
                for name in names:
                    bench.measure(name, scheme, c, min(duration, 1.0), options[kind])  # warm-up
                for r in range(rounds):
                    order = names[r % len(names):] + names[:r % len(names)]
                    for name in order:
                        runs.setdefault((kind, scheme, name), []).append(
                            bench.measure(name, scheme, c, duration, options[kind]))
        rows, results = [], {}
        for kind in kinds:
            for scheme in schemes:
                bare = runs[kind, scheme, "mitmdump"]
                for name in names:
                    mine = runs[kind, scheme, name]
                    ratios = [m.rps / b.rps for m, b in zip(mine, bare, strict=True)]
                    res = {"rps": median([m.rps for m in mine]), "ratio": median(ratios),
                           "cpu_us": median([m.cpu_us_per_req for m in mine]),
                           "main_us": median([m.main_thread_cpu_s / m.requests * 1e6 for m in mine if m.requests]),
                           "errors": sum(sum(m.errors.values()) for m in mine)}
                    results[f"{kind} {scheme} {name}"] = res
                    rows.append([kind, scheme, name, fmt(res["rps"], 0), f"{res['ratio']:.3f}",
                                 ", ".join(f"{x:.2f}" for x in ratios), fmt(res["cpu_us"], 0), fmt(res["main_us"], 0),
                                 str(res["errors"])])
        text = table(["request", "scheme", "proxy", "req/s", "/ bare (median)", "per round", "proxy CPU us/req",
                      "main thread us/req", "errors"], rows,
                     title=f"side by side: {conns} keep-alive connections (post10m: {CONNS_OF['post10m']}), {rounds} "
                           f"rotating rounds of {duration:g} s")
        return text, results
    finally:
        bench.close(False, "side by side")


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="goex-proxy vs bare mitmdump per kind of request, optionally with a second "
                                            "goex_proxy tree side by side (before/after).")
    p.add_argument("--requests", default="get,post", help=f"comma-separated: {', '.join(REQUEST_KINDS)}")
    p.add_argument("--schemes", default="http,https")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--compare-tree", type=Path, help="a directory holding another `goex_proxy` package to run too")
    p.add_argument("--tree", type=Path, help="run the main goex-proxy from this directory's `goex_proxy` package")
    args = p.parse_args()
    kinds = [k for k in args.requests.split(",") if k]
    if any(k not in REQUEST_KINDS for k in kinds):
        p.error(f"--requests: {', '.join(REQUEST_KINDS)}")
    procs = Processes()
    try:
        text, _ = side_by_side(procs, kinds, args.schemes.split(","), args.rounds, args.duration, args.conns,
                               args.compare_tree, args.tree)
    finally:
        procs.stop_all()
    print(text)


if __name__ == "__main__":
    main()
