"""What the database benchmarks share: a fresh PostgreSQL (Debian's, started as the tests start it: tests/pg.py) with
a `shop` database, and a `goex-proxy run` whose gateway serves it to one agent, `bench`, under a given policy."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common import PYTHON, Processes, free_port, wait_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pg import APP_USER, Postgres, running_postgres  # noqa: E402

TOKEN = "bench-agent-token-0123456789"


@dataclass
class ShopGateway:
    """The server, the running proxy, and the two ways to the `shop` database: straight and through the gateway."""

    pg: Postgres
    home: Path
    run: subprocess.Popen[bytes]
    direct: str
    gateway: str


@contextlib.contextmanager
def shop_gateway(processes: Processes, policy: str, tables: Iterable[str]) -> Iterator[ShopGateway]:
    """The server with `shop` made by `tables` (SQL run as its owner), and `run --quiet` serving it; both stopped
    after."""
    import psycopg

    with tempfile.TemporaryDirectory(prefix="goex-db-bench-") as tmp, running_postgres(free_port()) as pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {APP_USER[0]} LOGIN PASSWORD '{APP_USER[1]}'")
            conn.execute(f"CREATE DATABASE shop OWNER {APP_USER[0]}")
        with psycopg.connect(pg.dsn(APP_USER, "shop"), autocommit=True) as conn:
            for sql in tables:
                conn.execute(sql)
        home = Path(tmp)
        env = {**os.environ, "GOEX_PROXY_HOME": str(home), "GOEX_PROXY_WORKERS": "1"}
        proxy_port, gateway_port = free_port(), free_port()
        subprocess.run([PYTHON, "-m", "goex_proxy", "init"], env=env, check=True, capture_output=True)
        (home / "bench.yaml").write_text(policy)
        (home / "config.yaml").write_text(
            f"version: 1\nlisten: 127.0.0.1:{proxy_port}\nagents:\n  bench: {{token: {TOKEN}}}\npolicies: [bench.yaml]\n"
            f"databases:\n  listen: 127.0.0.1:{gateway_port}\n  shop:\n    host: 127.0.0.1\n    port: {pg.port}\n"
            f"    user: {APP_USER[0]}\n    password: shop-db\n    sslmode: disable\n    agents: [bench]\n")
        subprocess.run([PYTHON, "-m", "goex_proxy", "secrets", "set", "shop-db"], env=env, check=True,
                       input=APP_USER[1].encode(), capture_output=True)
        run = processes.start([PYTHON, "-m", "goex_proxy", "run", "--quiet"], env=env, log=home / "run.log")
        try:
            wait_port(gateway_port, run, what="the gateway")
            yield ShopGateway(pg, home, run, pg.dsn(APP_USER, "shop"),
                              f"postgresql://bench:{TOKEN}@127.0.0.1:{gateway_port}/shop")
        finally:
            processes.stop(run)
