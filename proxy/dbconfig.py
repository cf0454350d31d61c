"""The `databases:` section: the PostgreSQL databases agents reach through the gateway, with the real credential kept
in the vault, and where the gateway listens."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .approvalconfig import is_loopback, parse_host_port
from .durations import parse_duration
from .secretref import SecretRef
from .yamlsrc import Checker, YMap

#: Where the gateway listens unless `databases.listen` says otherwise (next to PostgreSQL's own 5432).
DEFAULT_LISTEN = ("127.0.0.1", 6433)
#: `databases.tls`: whether the gateway answers a client's SSLRequest with TLS (`offer`), demands it (`require`) or
#: declines it (`off`). One setting for the gateway: the request comes before the client names its database.
TLS_MODES = ("off", "offer", "require")
DEFAULT_TLS = "offer"
#: Keys of `databases:` that are the gateway's own, not databases.
GATEWAY_KEYS = ("listen", "tls")
SSLMODES = ("disable", "prefer", "require", "verify-full")
TRANSACTIONS = ("auto", "hold")
#: How long a held transaction (`transaction: hold`) may stay open, from its first statement, unless `hold_timeout`.
HOLD_TIMEOUT = 3600.0
_KEYS = {"host", "port", "dbname", "user", "password", "sslmode", "ca", "agents", "env", "transaction",
         "hold_timeout", "max_connections",
         "capture_rows"}
#: How many connections one agent may have open to one database through the gateway unless `max_connections` says.
DEFAULT_MAX_CONNECTIONS = 10
#: The most rows one statement may change when its rows are captured for undo, unless `capture_rows` says otherwise.
CAPTURE_ROWS = 10000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Database:
    """One upstream PostgreSQL database, by the name agents and policies use for it."""

    name: str
    host: str
    port: int
    dbname: str
    user: str
    password: SecretRef
    sslmode: str = "prefer"
    ca: Path | None = None                    # verify-full: the CA the server's certificate must chain to
    agents: frozenset[str] | None = None      # None: every agent of the config (`agents: ['*']`)
    env: str = "DATABASE_URL"
    transaction: str = "auto"
    hold_timeout: float = HOLD_TIMEOUT        # transaction: hold: seconds from its first statement to a rollback
    max_connections: int = DEFAULT_MAX_CONNECTIONS   # per agent: each is a connection to the real server
    capture_rows: int = CAPTURE_ROWS          # a statement changing more fails, nothing changed (db.capture)

    def admits(self, agent: str) -> bool:
        return self.agents is None or agent in self.agents


@dataclass(frozen=True)
class Databases:
    """The `databases:` section; no databases, no gateway."""

    listen: tuple[str, int] = DEFAULT_LISTEN
    by_name: dict[str, Database] = field(default_factory=dict)
    tls: str = DEFAULT_TLS

    def for_agent(self, agent: str) -> list[Database]:
        return [d for d in self.by_name.values() if d.admits(agent)]


def _password(check: Checker, spec: YMap, where: str) -> SecretRef | None:
    """A vault secret's name, or `{env: NAME}`; never the password itself."""
    value = spec.get("password")
    if isinstance(value, str) and value:
        return SecretRef(vault=value)
    if isinstance(value, YMap):
        env = check.mapping(value, f"{where}.password", check.at(spec, "password"), {"env"}, {"env"})
        return SecretRef(env=env["env"]) if env is not None and isinstance(env.get("env"), str) else None
    check.error(check.at(spec, "password"), f"'{where}.password' must name a vault secret or be {{env: NAME}} "
                                            "(secrets are never written into the config)")
    return None


def _database(check: Checker, name: str, raw: Any, pos: tuple[int, int], base: Path,
              agents: set[str]) -> Database | None:
    where = f"databases.{name}"
    spec = check.mapping(raw, where, pos, _KEYS, {"host", "user", "password", "agents"})
    if spec is None:
        return None
    host = check.string(spec, "host", f"{where}.host") or ""
    port = spec.get("port", 5432)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        check.error(check.at(spec, "port"), f"'{where}.port' must be a port number (got {port!r})")
        port = 5432
    sslmode = check.string(spec, "sslmode", f"{where}.sslmode", "prefer") or "prefer"
    if sslmode not in SSLMODES:
        check.error(check.at(spec, "sslmode"), f"'{where}.sslmode' must be one of {', '.join(SSLMODES)} "
                                               f"(got {sslmode!r})")
    ca = None
    if (ca_text := check.string(spec, "ca", f"{where}.ca")) is not None:
        ca = Path(ca_text).expanduser()
        ca = ca if ca.is_absolute() else base / ca
        if not ca.is_file():
            check.error(check.at(spec, "ca"), f"'{where}.ca' file {str(ca)!r} does not exist")
    transaction = check.string(spec, "transaction", f"{where}.transaction", "auto") or "auto"
    if transaction not in TRANSACTIONS:
        check.error(check.at(spec, "transaction"), f"'{where}.transaction' must be auto or hold (got {transaction!r})")
    hold_timeout = HOLD_TIMEOUT
    if "hold_timeout" in spec:
        hold_timeout = check.parsed(spec, "hold_timeout", f"{where}.hold_timeout", parse_duration) or HOLD_TIMEOUT
        if transaction != "hold":
            check.error(check.at(spec, "hold_timeout"), f"'{where}.hold_timeout' applies only to 'transaction: hold'")
    env = check.string(spec, "env", f"{where}.env", "DATABASE_URL") or "DATABASE_URL"
    if not _ENV_NAME.fullmatch(env):
        check.error(check.at(spec, "env"), f"'{where}.env' {env!r} is not an environment variable name")
    allowed = check.strings(spec, "agents", f"{where}.agents") or []
    if not allowed:
        check.error(check.at(spec, "agents"), f"'{where}.agents' must name the agents that may use it (or '*')")
    for agent in allowed:
        if agent != "*" and agent not in agents:
            check.error(check.at(spec, "agents"), f"'{where}.agents' names {agent!r}, which is not in 'agents'")
    most = spec.get("max_connections", DEFAULT_MAX_CONNECTIONS)
    if not isinstance(most, int) or isinstance(most, bool) or most < 1:
        check.error(check.at(spec, "max_connections"), f"'{where}.max_connections' must be a whole number of at least "
                                                       f"1 (got {most!r})")
        most = DEFAULT_MAX_CONNECTIONS
    capture_rows = spec.get("capture_rows", CAPTURE_ROWS)
    if not isinstance(capture_rows, int) or isinstance(capture_rows, bool) or capture_rows < 1:
        check.error(check.at(spec, "capture_rows"), f"'{where}.capture_rows' must be a number of rows, 1 or more "
                                                    f"(got {capture_rows!r})")
        capture_rows = CAPTURE_ROWS
    password = _password(check, spec, where)
    if password is None or not host:
        return None
    return Database(name, host, port, check.string(spec, "dbname", f"{where}.dbname") or name,
                    check.string(spec, "user", f"{where}.user") or "", password, sslmode, ca,
                    None if "*" in allowed else frozenset(allowed), env, transaction, hold_timeout, most,
                    capture_rows)


def parse_databases(check: Checker, top: YMap, base: Path, agents: set[str]) -> Databases:
    """The `databases:` section, every problem recorded on `check`: `listen` (the gateway's address) and one entry
    per database, by name."""
    if "databases" not in top or top["databases"] is None:
        return Databases()
    raw = top["databases"]
    spec = check.mapping(raw, "databases", check.at(top, "databases"), set(raw) if isinstance(raw, YMap) else set())
    if spec is None:
        return Databases()
    listen = DEFAULT_LISTEN
    if "listen" in spec:
        listen = check.parsed(spec, "listen", "databases.listen",
                              lambda v: parse_host_port(v, "127.0.0.1:6433")) or DEFAULT_LISTEN
    tls = _tls(check, spec)
    if "listen" in spec and not is_loopback(listen[0]) and tls != "require":
        check.warn(check.at(spec, "listen"), f"'databases.listen' {listen[0]} is not a loopback address: the "
                                             "statements and results of an agent that does not ask for TLS would "
                                             "cross the network unencrypted (set 'databases.tls: require')")
    found: dict[str, Database] = {}
    envs: dict[tuple[str, str], str] = {}
    for name in spec:
        if name in GATEWAY_KEYS:
            continue
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            check.error(spec.key_pos[name], f"database name {name!r} must be letters, digits, '.', '_' or '-'")
            continue
        database = _database(check, name, spec[name], check.at(spec, name), base, agents)
        if database is None:
            continue
        for agent in (database.agents or agents):
            if (other := envs.get((agent, database.env))) is not None:
                check.error(check.at(spec, name), f"'databases.{name}.env' {database.env} is also given to agent "
                                                  f"{agent!r} by database {other!r}; give one of them another 'env'")
            envs[(agent, database.env)] = name
        found[name] = database
    return Databases(listen, found, tls)


def _tls(check: Checker, spec: YMap) -> str:
    """`databases.tls`: off, offer or require (YAML reads a bare `off` as false, which says the same)."""
    value = spec.get("tls", DEFAULT_TLS)
    if value is False:
        return "off"
    if value not in TLS_MODES:
        got = ("a mapping: tls is the gateway's own setting, so no database can be named tls"
               if isinstance(value, YMap) else "true" if value is True else repr(value))
        check.error(check.at(spec, "tls"), f"'databases.tls' must be off, offer or require (got {got})")
        return "require"  # not used: the config does not load with an error
    return str(value)


def restart_changes(running: Databases, edited: Databases) -> list[str]:
    """What of an edited `databases:` section a running `run` takes over only when it restarts: where the gateway
    listens, and the gateway itself when `run` started without a database (it did not start one). The databases and
    which agents may use them are taken over at once."""
    if not running.by_name:
        return ["databases (the gateway starts with `run` when the config has a database)"] if edited.by_name else []
    return ["databases.listen"] if edited.by_name and edited.listen != running.listen else []
