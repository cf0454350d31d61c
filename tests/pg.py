"""A real PostgreSQL server for the tests, on 127.0.0.1 with SCRAM-SHA-256 password authentication: Debian's
`postgresql` (tests/install-tools), its cluster made once per test session in a directory of its own (as `nobody` when
the tests run as root, which `initdb` refuses)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: The server's superuser and the application user the gateway logs in as, with their passwords.
SUPERUSER = ("postgres", "super-secret-Pw-1")
APP_USER = ("shopapp", "Db-Password-Never-Shown-9x7")


def server_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, postgres), newest major version first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name),
                   reverse=True)
    if found:
        return found[0].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class Postgres:
    host: str
    port: int
    data: Path

    def dsn(self, user: tuple[str, str] = SUPERUSER, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={user[0]} password={user[1]} dbname={dbname} sslmode=disable"


def _as_server_user(command: list[str]) -> list[str]:
    """`command` as `nobody` when we are root (initdb and postgres refuse root), else as ourselves."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *command]


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam("nobody")
        os.chown(path, entry.pw_uid, entry.pw_gid)


@contextlib.contextmanager
def running_postgres(port: int, tls: tuple[bytes, bytes] | None = None) -> Iterator[Postgres]:
    """A fresh cluster on 127.0.0.1:`port` until the block ends (then stopped and removed); with `tls` (a certificate
    chain and its key, PEM), it also offers TLS."""
    binaries = server_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL's server is not installed: run tests/install-tools (Debian package postgresql)")
    root = Path(tempfile.mkdtemp(prefix="goex-pg-"))
    root.chmod(0o755)
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(SUPERUSER[1] + "\n")
    pwfile.chmod(0o644)
    data.mkdir(mode=0o700)
    _own(data)
    _own(root)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    settings = []
    if tls is not None:
        for name, pem in (("server.crt", tls[0]), ("server.key", tls[1])):
            (root / name).write_bytes(pem)
            (root / name).chmod(0o600)
            _own(root / name)
        settings = ["-c", "ssl=on", "-c", f"ssl_cert_file={root / 'server.crt'}",
                    "-c", f"ssl_key_file={root / 'server.key'}"]
    subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", SUPERUSER[0], "-E", "UTF8",
                                    "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync"]),
                   check=True, capture_output=True, env=env, cwd=root)
    server = subprocess.Popen(_as_server_user([
        str(binaries / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(root),
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        "-c", "password_encryption=scram-sha-256", *settings]),
        stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "ab"), env=env, cwd=root)
    try:
        _wait_ready(binaries, port, server, root)
        yield Postgres("127.0.0.1", port, data)
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(binaries: Path, port: int, server: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited with {server.returncode}: "
                               f"{(root / 'server.log').read_text(errors='replace')[-2000:]}")
        ready = subprocess.run([str(binaries / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"])
        if ready.returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError("postgres did not become ready within 60s")
