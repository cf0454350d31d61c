"""What the database gateway costs: statements per second through `goex-proxy run`'s gateway against the same
PostgreSQL directly, over keep-alive connections (psycopg, extended protocol, one parameter), side by side.

A fresh PostgreSQL (Debian's, as the tests start it: tests/pg.py) with a 1,000-row table; a `goex-proxy init` home
whose `run` serves the gateway with a policy allowing the two statements. Per round, each side runs N statements per
connection after a warm-up, on 1 connection and on CONNS connections at once (threads), interleaved
direct/relay/gateway; the table shows medians over the rounds and ratios to direct. The relay is a plain asyncio TCP
relay (bench/tcp_relay.py: bytes both ways, nothing read or recorded), the floor of any Python hop; the proxy's CPU
time per statement (all its threads, from /proc) is steadier than rates on a shared machine. Kinds: `select` (a
primary-key read) and `update` (a single-row update). The issue's goal is >= 0.8 of direct for selects; each
statement the gateway relays is first committed to the audit log (write-ahead), except messages that only read,
whose rows are queued to the writer in order and not waited for (README, "Databases").

    python bench/db_bench.py [--rounds 5] [--statements 1000] [--conns 4] [--tls] [--profile select|update]

The gateway is measured without TLS (`sslmode=disable`; its default `databases.tls: offer` would give TLS to psycopg's
default, prefer); `--tls` adds the same statements with `sslmode=require` in TLS, and connections per second (a
connection made, SCRAM, one select, closed) both ways: what TLS between the agent and the gateway costs (and
`--profile` then samples a connection in TLS).

`--profile KIND` then samples `run` with py-spy (if installed) while one connection runs KIND through the gateway,
and prints where the proxy's time goes per statement (bench/profile_goex.py's analysis); `--gil` samples only what
holds the GIL (time waiting in a system call or for the GIL left out).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import PYTHON, Processes, cpu_seconds, fmt, free_port, median, table, wait_port
from db_common import shop_gateway

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pg import server_bin  # noqa: E402

POLICY = """\
version: 1
name: bench
rules:
  - name: reads
    allow: {database: shop, statements: [select], tables: [orders]}
  - name: writes
    allow: {database: shop, statements: [update], tables: [orders]}
"""
KINDS = {"select": "SELECT qty FROM orders WHERE id = %s", "update": "UPDATE orders SET qty = qty + 1 WHERE id = %s"}


def rate(url: str, sql: str, statements: int, conns: int) -> float:
    """Statements per second over `conns` connections at once, each running `statements` after 50 to warm up."""
    import psycopg

    ready, go = threading.Barrier(conns + 1), threading.Event()
    failures: list[BaseException] = []

    def client(index: int) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                for i in range(50):
                    conn.execute(sql, (1 + (index * 97 + i) % 1000,))
                ready.wait()
                go.wait()
                for i in range(statements):
                    conn.execute(sql, (1 + (index * 97 + i) % 1000,))
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            failures.append(exc)
            ready.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(conns)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    took = time.perf_counter() - started
    if failures:
        raise SystemExit(f"bench: a client failed: {failures[0]}")
    return statements * conns / took


def connects(url: str, count: int) -> float:
    """Connections per second, one after another: each made (TLS if the URL says, SCRAM), one select, closed."""
    import psycopg

    started = time.perf_counter()
    for _ in range(count):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT 1")
    return count / (time.perf_counter() - started)


def profile(processes: Processes, pid: int, url: str, sql: str, statements: int, workdir: Path,
            gil: bool = False) -> str:
    """py-spy's samples of `run` while one connection runs `statements` of `sql` through the gateway, analysed."""
    from profile_goex import RATE, _py_spy, analyse

    spy = _py_spy()
    if not spy:
        return "(profile skipped: py-spy is not installed: pip install py-spy)"
    raw = workdir / "py-spy.txt"
    sampler = processes.start([spy, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw", "--threads",
                               *(["--gil"] if gil else []), "-o", str(raw)], log=workdir / "py-spy.log")
    time.sleep(1.0)  # py-spy attaches
    took = statements / rate(url, sql, statements, 1)
    sampler.send_signal(signal.SIGINT)  # py-spy writes what it sampled when interrupted
    with contextlib.suppress(subprocess.TimeoutExpired):
        sampler.wait(timeout=30)
    processes.stop(sampler)
    if not raw.exists():
        return f"(py-spy recorded nothing: {(workdir / 'py-spy.log').read_text(errors='replace')[-400:]})"
    text, _ = analyse(raw, statements)
    return f"profile: {statements} statements on one connection in {took:.2f}s, py-spy at {RATE} Hz\n{text}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--statements", type=int, default=1000)
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--tls", action="store_true", help="also measure the gateway with TLS (sslmode=require)")
    parser.add_argument("--profile", choices=sorted(KINDS), help="then profile the gateway running this kind")
    parser.add_argument("--gil", action="store_true", help="profile only what holds the GIL (py-spy --gil)")
    args = parser.parse_args()
    if server_bin() is None:
        raise SystemExit(2)  # PostgreSQL is not installed (tests/install-tools)

    processes = Processes()
    tables = ("CREATE TABLE orders (id int PRIMARY KEY, qty int NOT NULL)",
              "INSERT INTO orders SELECT g, g FROM generate_series(1, 1000) g")
    with shop_gateway(processes, POLICY, tables) as shop:
        run, home, direct = shop.run, shop.home, shop.direct
        gateway, tls = shop.gateway + "?sslmode=disable", shop.gateway + "?sslmode=require"
        relay_port = free_port()
        relay = processes.start([PYTHON, str(Path(__file__).with_name("tcp_relay.py")), str(relay_port),
                                 str(shop.pg.port)])
        try:
            wait_port(relay_port, relay, what="the relay")
            relayed = direct.replace(f"port={shop.pg.port} ", f"port={relay_port} ")
            assert relayed != direct
            rows = []
            for kind, sql in KINDS.items():
                for conns in (1, args.conns):
                    measured: dict[str, list[float]] = {"direct": [], "relay": [], "gateway": [], "cpu": [],
                                                        "tls": [], "tls cpu": []}
                    for _ in range(args.rounds):
                        measured["direct"].append(rate(direct, sql, args.statements, conns))
                        measured["relay"].append(rate(relayed, sql, args.statements, conns))
                        before = cpu_seconds(run.pid)  # the 50 warm-up statements a connection runs count too
                        measured["gateway"].append(rate(gateway, sql, args.statements, conns))
                        spent = cpu_seconds(run.pid) - before
                        measured["cpu"].append(spent / ((args.statements + 50) * conns) * 1e6)
                        if args.tls:
                            before = cpu_seconds(run.pid)
                            measured["tls"].append(rate(tls, sql, args.statements, conns))
                            spent = cpu_seconds(run.pid) - before
                            measured["tls cpu"].append(spent / ((args.statements + 50) * conns) * 1e6)
                    d, r, g = median(measured["direct"]), median(measured["relay"]), median(measured["gateway"])
                    rows.append((kind, conns, fmt(d, 0), fmt(r, 0), fmt(g, 0), fmt(r / d, 3), fmt(g / d, 3),
                                 fmt(median(measured["cpu"]), 0))
                                + ((fmt(median(measured["tls"]), 0), fmt(median(measured["tls"]) / g, 3),
                                    fmt(median(measured["tls cpu"]), 0)) if args.tls else ()))
            print(table(("statements", "connections", "direct /s", "relay /s", "gateway /s", "relay / direct",
                         "gateway / direct", "proxy CPU us/stmt")
                        + (("gateway TLS /s", "TLS / plain", "TLS CPU us/stmt") if args.tls else ()), rows,
                        title=f"database gateway: medians of {args.rounds} rounds, {args.statements} statements "
                              "per connection"))
            if args.tls:
                made: dict[str, list[float]] = {"plain": [], "tls": []}
                for _ in range(args.rounds):
                    made["plain"].append(connects(gateway, 50))
                    made["tls"].append(connects(tls, 50))
                plain, encrypted = median(made["plain"]), median(made["tls"])
                print(table(("connections", "plain /s", "TLS /s", "TLS / plain"),
                            [("made, 1 select, closed", fmt(plain, 1), fmt(encrypted, 1), fmt(encrypted / plain, 3))],
                            title=f"gateway connections: medians of {args.rounds} rounds of 50"))
            if args.profile:
                print(profile(processes, run.pid, tls if args.tls else gateway, KINDS[args.profile],
                              args.statements * 4, home, args.gil))
        finally:
            processes.stop_all()


if __name__ == "__main__":
    main()
