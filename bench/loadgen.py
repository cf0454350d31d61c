"""A lean closed-loop HTTP/1.1 load generator: N keep-alive connections, through an HTTP proxy or direct.

Plain HTTP goes to the proxy in absolute form with a `Proxy-Authorization: Basic` header; HTTPS opens a CONNECT
tunnel (with the same header), then TLS inside it, verified against --ca (the proxy's CA when intercepted).
Every connection is set up and warmed before the timed window; only responses completed inside the window count.

Prints `window-start` and `window-end` lines (so the caller can sample CPU time of other processes exactly over the
window), then one JSON line with the result. Run as a child process of bench/run.py; usable by hand too:
    python bench/loadgen.py --scheme https --target-port 8443 --proxy-port 8080 --proxy-auth bench:secret \
        --ca ~/.goex-proxy/mitmproxy-ca-cert.pem --conns 10 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import sys
import time
from dataclasses import dataclass, field


@dataclass
class Stats:
    latencies_ns: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    reconnects: int = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Target:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.host = "127.0.0.1"
        self.name = args.host or self.host  # the name requests carry (a proxy may route it to 127.0.0.1)
        self.port = args.target_port
        self.https = args.scheme == "https"
        self.authority = f"{self.name}:{self.port}"
        auth = ""
        if args.proxy_auth:
            auth = "Proxy-Authorization: Basic " + base64.b64encode(args.proxy_auth.encode()).decode() + "\r\n"
        self.proxy_auth = auth
        common = f"Host: {self.authority}\r\nUser-Agent: goex-bench/1\r\nAccept: */*\r\n"
        body = open(args.body_file, "rb").read() if args.body_file else args.body.encode()  # noqa: SIM115
        if body or args.method not in ("GET", "HEAD"):
            common += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        if args.proxy_port and not self.https:
            self.request = (f"{args.method} http://{self.authority}{args.path} HTTP/1.1\r\n{common}{auth}\r\n"
                            ).encode() + body
        else:
            self.request = f"{args.method} {args.path} HTTP/1.1\r\n{common}\r\n".encode() + body
        self.connect = f"CONNECT {self.authority} HTTP/1.1\r\nHost: {self.authority}\r\n{auth}\r\n".encode()
        self.ssl: ssl.SSLContext | None = None
        if self.https:
            ctx = ssl.create_default_context(cafile=args.ca)
            ctx.set_alpn_protocols(["http/1.1"])
            self.ssl = ctx

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        a = self.args
        if not a.proxy_port:
            return await asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                                 server_hostname=self.name if self.ssl else None)
        reader, writer = await asyncio.open_connection("127.0.0.1", a.proxy_port)
        if self.https:
            writer.write(self.connect)
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200" not in head.split(b"\r\n", 1)[0]:
                writer.close()
                first = head.split(b"\r\n", 1)[0].decode(errors="replace")
                raise ConnectionError(f"CONNECT refused: {first}")
            await writer.start_tls(self.ssl, server_hostname=self.name)  # type: ignore[arg-type]
        return reader, writer


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; returns (status, keep-alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        stop = lower.find(b"\r\n", at + 2)
        await reader.readexactly(int(lower[at + 17:stop]))
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    keep = b"\r\nconnection: close" not in lower and not head.startswith(b"HTTP/1.0")
    return status, keep


async def worker(target: Target, stats: Stats, ready: asyncio.Barrier, window: dict[str, int]) -> None:
    conn = None
    warm = target.args.warmup
    req = target.request
    while True:
        if conn is None:
            try:
                conn = await target.open()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError,
                    ConnectionError) as exc:
                stats.error(f"connect: {exc}"[:120])
                await asyncio.sleep(0.05)
                if "end" in window and time.perf_counter_ns() >= window["end"]:
                    return
                continue
        reader, writer = conn
        t0 = time.perf_counter_ns()
        try:
            writer.write(req)
            status, keep = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError) as exc:
            stats.error(f"request: {type(exc).__name__}")
            writer.close()
            conn = None
            stats.reconnects += 1
            continue
        t1 = time.perf_counter_ns()
        if not keep:
            writer.close()
            conn = None
            stats.reconnects += 1
        if warm > 0:
            warm -= 1
            if warm == 0:
                await ready.wait()
            continue
        if t1 > window["end"]:
            break
        if t1 >= window["start"]:  # completed inside the window
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                stats.latencies_ns.append(t1 - t0)
            else:
                stats.error(f"status {status}")
    if conn is not None:
        conn[1].close()


def pct(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    k = max(0, min(len(values) - 1, int(round(q / 100.0 * len(values) + 0.5)) - 1))
    return values[k] / 1e6


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scheme", choices=["http", "https"], default="http")
    p.add_argument("--target-port", type=int, required=True, help="upstream port on 127.0.0.1")
    p.add_argument("--host", default="", help="host name in the request line and Host header (default 127.0.0.1; "
                   "direct connections still go to 127.0.0.1)")
    p.add_argument("--path", default="/bench/items/42")
    p.add_argument("--method", default="GET", help="request method (default GET)")
    p.add_argument("--body", default="", help="request body, sent as application/json (e.g. with --method PUT)")
    p.add_argument("--body-file", help="read the request body from this file (a body too large for the command line)")
    p.add_argument("--proxy-port", type=int, default=0, help="HTTP proxy on 127.0.0.1 (0: connect directly)")
    p.add_argument("--proxy-auth", default="", help="USER:PASSWORD for Proxy-Authorization: Basic")
    p.add_argument("--ca", help="CA file to verify TLS with (the proxy's CA when it intercepts)")
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=int, default=20, help="requests per connection before the window")
    args = p.parse_args()
    args.warmup = max(1, args.warmup)

    target = Target(args)
    stats = Stats()
    window: dict[str, int] = {"start": 1 << 62, "end": 1 << 62}
    ready = asyncio.Barrier(args.conns + 1)
    tasks = [asyncio.create_task(worker(target, stats, ready, window)) for _ in range(args.conns)]
    try:
        await asyncio.wait_for(ready.wait(), timeout=30)
    except TimeoutError:
        print(json.dumps({"fatal": "connections could not be set up and warmed within 30s",
                          "errors": stats.errors}), flush=True)
        for t in tasks:
            t.cancel()
        return
    print("window-start", flush=True)
    cpu0 = time.process_time()
    start = time.perf_counter_ns()
    window["start"] = start
    window["end"] = start + int(args.duration * 1e9)
    await asyncio.sleep(args.duration)
    print("window-end", flush=True)
    cpu1 = time.process_time()
    done, pending = await asyncio.wait(tasks, timeout=10)
    for t in pending:
        t.cancel()
    for t in done:
        if t.exception() is not None:
            stats.error(f"worker: {t.exception()!r}"[:120])
    lat = sorted(stats.latencies_ns)
    print(json.dumps({
        "requests": len(lat),
        "duration_s": args.duration,
        "rps": len(lat) / args.duration,
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "max_ms": lat[-1] / 1e6 if lat else float("nan"),
        "errors": stats.errors,
        "statuses": stats.statuses,
        "reconnects": stats.reconnects,
        "loadgen_cpu_s": cpu1 - cpu0,
    }), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
