"""The versioned YAML config, loaded safely onto frozen dataclasses; unknown keys are errors with `file:line:col`."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import configfile, yamlsrc
from .approvalconfig import Approvals, parse_approvals, parse_host_port
from .configfile import DEFAULT_MAX_BODY
from .consoleconfig import Console, RunningListens, parse_console
from .credentials.kinds import Credential, Injection
from .dbconfig import Databases, parse_databases
from .durations import parse_duration
from .errors import ConfigError, Problem
from .globs import Glob, compile_host, compile_path
from .hostkey import host_key
from .net.clientlimits import ClientLimits, parse_limits
from .net.egress import EgressRules, parse_allow
from .presets import resolve, resolve_undo, undo_names
from .secretref import SecretRef
from .yamlsrc import Checker, YMap

if TYPE_CHECKING:
    from .credentials.oauth import OAuth2

_SANDBOX_KEYS = {"hide", "expose", "allow_sockets", "pass_env", "max_processes"}
_LLM_KEYS = {"base_url", "model", "api_key", "timeout"}
_CREDENTIAL_KEYS = {"secret", "host", "hosts", "methods", "paths", "schemes", "inject", "env"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: RFC 9110 5.6.2: what a header name may be (`inject.header`).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: What no header value may hold: written into HTTP/1.1, each ends the line.
_LINE_BREAKING = re.compile(r"[\r\n\0]")
#: The fewest characters an agent's token may have: it is all that tells one agent from another (or from any other
#: local process) to the proxy.
MIN_TOKEN_LENGTH = 12


def weak_token(token: str) -> str | None:
    """Why a token is too weak to prove an agent, if it is."""
    if len(token) < MIN_TOKEN_LENGTH:
        return (f"is {len(token)} characters; use at least {MIN_TOKEN_LENGTH} random ones (e.g. from "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
    return None


#: The most processes Linux can have at once (PID_MAX_LIMIT on 64-bit): a pids cgroup takes no larger cap.
PID_MAX_LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True)
class Agent:
    """An identity that may use the proxy, proven by its token in the proxy URL."""

    name: str
    token: SecretRef


@dataclass(frozen=True)
class PolicySource:
    """One `policies:` entry: where the file is, and which agents it is narrowed to (None: as the file says)."""

    ref: str
    path: Path
    agents: frozenset[str] | None = None


@dataclass(frozen=True)
class Route:
    """Where traffic for a host really goes; policy, credentials and audit still see the original host."""

    scheme: str
    host: str
    port: int


@dataclass(frozen=True)
class LLM:
    """The model `execute` and `undo --propose` ask: any OpenAI-compatible endpoint."""

    base_url: str
    model: str
    api_key: SecretRef | None = None
    timeout: float = 120.0


@dataclass(frozen=True)
class Sandbox:
    """What a jail hides and passes beyond its defaults (`sandbox:`); paths are absolute, `~` expanded."""

    hide: tuple[Path, ...] = ()
    expose: tuple[Path, ...] = ()
    allow_sockets: tuple[Path, ...] = ()
    pass_env: tuple[str, ...] = ()
    max_processes: int = 4096  # processes and threads a jail may have at once (a fork bomb's stop)


@dataclass(frozen=True)
class Config:
    """Everything `goex-proxy run` needs, validated."""

    file: Path
    state_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    agents: dict[str, Agent] = field(default_factory=dict)
    policies: tuple[PolicySource, ...] = ()
    audit_db: Path = Path("audit.db")
    max_body_bytes: int = DEFAULT_MAX_BODY
    retention: float | None = None  # `audit.retention`: rows older than this are pruned (None: kept)
    wait_for_reads: bool = False  # `audit.wait_for_reads`: a GET waits for its row's commit as a write does
    routes: dict[str, Route] = field(default_factory=dict)
    extra_ca: tuple[Path, ...] = ()
    credentials: dict[str, Credential] = field(default_factory=dict)
    undo_packs: tuple[Path, ...] = ()
    block_private: bool = True
    allow_private: tuple[str, ...] = ()
    resolver: tuple[str, int] | None = None
    llm: LLM | None = None
    sandbox: Sandbox = Sandbox()
    limits: ClientLimits = ClientLimits()
    approvals: Approvals = Approvals()
    console: Console = Console()
    databases: Databases = Databases()

    @property
    def policy_sources(self) -> list[tuple[Path, frozenset[str] | None]]:
        """The policy files with the agents each is narrowed to, as `load_policy_set` takes them."""
        return [(p.path, p.agents) for p in self.policies]

    @property
    def ca_cert(self) -> Path:
        """The CA certificate agents must trust (mitmproxy's name for it, in the state directory)."""
        return self.state_dir / "mitmproxy-ca-cert.pem"

    def route_for(self, host: str, port: int) -> Route | None:
        """Where `upstream.routes` sends host:port (the host in any case, with or without a trailing dot)."""
        host = host_key(host)
        return self.routes.get(f"{host}:{port}") or self.routes.get(host)

    @functools.cached_property
    def egress(self) -> EgressRules:
        """The SSRF guard's rules (`upstream.block_private_networks`, `upstream.allow_private`, the listen address,
        and the approval links' and the console's, which no agent may reach)."""
        allowed = [parse_allow(entry) for entry in self.allow_private]
        links = self.approvals.public_url
        return EgressRules(self.block_private, tuple(a for a in allowed if isinstance(a, Glob)),
                           tuple(a for a in allowed if not isinstance(a, Glob)), (self.listen_host, self.listen_port),
                           self.approvals.listen, (urlsplit(links).hostname or "").lower() or None if links else None,
                           self.console.listen, RunningListens(self.state_dir),
                           (urlsplit(self.console.public_url).hostname or "").lower() or None
                           if self.console.public_url else None)


def _ca_file_problem(path: Path) -> str | None:
    """Why a file is not PEM certificates to trust, if it is not: `run` joins it into mitmproxy's bundle as text (a
    file that is not UTF-8 ended it with an internal error after its banner), and Python's TLS refuses a file that
    holds no certificate when goex-proxy sends a request of its own."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    except UnicodeDecodeError as exc:
        return f"is not text (byte {exc.start}); it must hold PEM certificates"
    if "-----BEGIN CERTIFICATE-----" not in text:
        return "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    return None


def _listen(value: Any) -> tuple[str, int]:
    return parse_host_port(value)


def _route(value: Any) -> Route:
    parts = urlsplit(value) if isinstance(value, str) else None
    if not parts or parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"must be a URL like http://127.0.0.1:9001 with no path (got {value!r})")
    return Route(parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))


def _secret(check: Checker, parent: YMap, key: str, where: str) -> SecretRef | None:
    value = parent.get(key)
    if isinstance(value, str) and value:
        return SecretRef(inline=value)
    ref = check.mapping(value, where, check.at(parent, key), {"env"}, {"env"})
    if ref is not None and isinstance(ref.get("env"), str):
        return SecretRef(env=ref["env"])
    if ref is not None:
        check.error(check.at(ref, "env"), f"'{where}.env' must name an environment variable")
    return None


_OAUTH2_KEYS = {"provider", "client_id", "client_secret", "scopes", "token_url", "authorize_url", "refresh_margin",
                "client_auth", "redirect_port"}
_INJECT_KINDS = ("header", "basic", "query", "oauth2", "aws_sigv4")


def _injection(check: Checker, c: YMap, where: str) -> Injection | None:
    spec = check.mapping(c.get("inject"), f"{where}.inject", check.at(c, "inject"), {"value", *_INJECT_KINDS})
    if spec is None:
        return None
    kinds = [k for k in _INJECT_KINDS if k in spec]
    if len(kinds) != 1:
        check.error(spec.pos, f"'{where}.inject' needs exactly one of {', '.join(_INJECT_KINDS)}")
        return None
    if kinds == ["header"]:
        name = check.string(spec, "header", f"{where}.inject.header") or "Authorization"
        if not _TOKEN.fullmatch(name):  # sent as it is: a line break in it wrote a header line of its own upstream
            check.error(check.at(spec, "header"), f"'{where}.inject.header' must be a header name (letters, digits "
                                                  f"and !#$%&'*+-.^_`|~; got {name!r:.80})")
        template = check.string(spec, "value", f"{where}.inject.value", "Bearer {secret}") or "Bearer {secret}"
        if "{secret}" not in template:
            check.error(check.at(spec, "value"), f"'{where}.inject.value' must contain {{secret}} (got {template!r})")
        if _LINE_BREAKING.search(template):
            check.error(check.at(spec, "value"), f"'{where}.inject.value' must not hold a CR, LF or NUL: it would "
                                                 "start a header line of its own upstream")
        return Injection("header", name, template)
    if kinds == ["basic"]:
        basic = check.mapping(spec["basic"], f"{where}.inject.basic", check.at(spec, "basic"), {"username"})
        raw = basic.get("username", "") if basic is not None else ""
        if isinstance(raw, int) and not isinstance(raw, bool):  # `username: 12345` reads as a number
            raw = str(raw)
        username = raw if isinstance(raw, str) else ""
        if basic is not None and not isinstance(raw, str):  # was sent as its repr: "['x']"
            check.error(check.at(basic, "username"), f"'{where}.inject.basic.username' must be a string (got "
                                                     f"{yamlsrc.type_name(raw)})")
        elif basic is not None and (":" in username or _LINE_BREAKING.search(username)):
            check.error(check.at(basic, "username"), f"'{where}.inject.basic.username' must not hold ':', CR, LF or "
                                                     f"NUL (got {username!r:.80})")
        return Injection("basic", username=username)
    if kinds == ["oauth2"]:
        oauth = _oauth2(check, spec, f"{where}.inject.oauth2")
        return Injection("oauth2", oauth2=oauth) if oauth is not None else None
    if kinds == ["aws_sigv4"]:
        if spec["aws_sigv4"] not in (None, {}) and check.mapping(spec["aws_sigv4"], f"{where}.inject.aws_sigv4",
                                                                   check.at(spec, "aws_sigv4"), set()) is None:
            return None
        return Injection("aws_sigv4")
    param = check.string(spec, "query", f"{where}.inject.query")
    if param == "":
        check.error(check.at(spec, "query"), f"'{where}.inject.query' must name the query parameter")
    return Injection("query", param or "key")


def _oauth2(check: Checker, parent: YMap, where: str) -> OAuth2 | None:
    from .credentials.oauth import PROVIDERS, OAuth2

    spec = check.mapping(parent["oauth2"], where, check.at(parent, "oauth2"), _OAUTH2_KEYS, {"provider", "client_id"})
    if spec is None:
        return None
    provider_name = check.string(spec, "provider", f"{where}.provider") or "generic"
    provider = PROVIDERS.get(provider_name)
    if provider is None:
        check.error(check.at(spec, "provider"), f"'{where}.provider' must be one of {', '.join(PROVIDERS)} "
                                                f"(got {provider_name!r})")
        return None
    urls = {}
    for key in ("token_url", "authorize_url"):
        url = check.string(spec, key, f"{where}.{key}") or getattr(provider, key)
        parts = urlsplit(url) if url else None
        if not url:
            check.error(spec.pos, f"'{where}' needs {key} for the {provider_name} provider")
        elif parts is None or parts.scheme != "https" or not parts.hostname:
            check.error(check.at(spec, key), f"'{where}.{key}' must be an https:// URL (got {url!r})")
        urls[key] = url
    client_auth = check.string(spec, "client_auth", f"{where}.client_auth", "post") or "post"
    if client_auth not in ("post", "basic"):
        check.error(check.at(spec, "client_auth"), f"'{where}.client_auth' must be post or basic (got {client_auth!r})")
    port = spec.get("redirect_port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
        check.error(check.at(spec, "redirect_port"), f"'{where}.redirect_port' must be a port number (got {port!r})")
        port = 0
    client_secret = _vault_or_env(check, spec, "client_secret", where) if "client_secret" in spec else None
    margin = check.parsed(spec, "refresh_margin", f"{where}.refresh_margin", parse_duration)
    return OAuth2(replace(provider, token_url=urls["token_url"], authorize_url=urls["authorize_url"]),
                  check.string(spec, "client_id", f"{where}.client_id") or "", client_secret,
                  tuple(check.strings(spec, "scopes", f"{where}.scopes") or ()),
                  margin if margin is not None else 60.0, client_auth, port)


def _llm(check: Checker, top: YMap) -> LLM | None:
    if "llm" not in top:
        return None
    spec = check.mapping(top["llm"], "llm", check.at(top, "llm"), _LLM_KEYS, {"base_url", "model"})
    if spec is None:
        return None
    base_url = check.string(spec, "base_url", "llm.base_url") or ""
    if base_url and (urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).hostname):
        check.error(check.at(spec, "base_url"), f"'llm.base_url' must be an http(s) URL such as "
                                                f"https://api.openai.com/v1 (got {base_url!r})")
    model = check.string(spec, "model", "llm.model") or ""
    timeout = check.parsed(spec, "timeout", "llm.timeout", parse_duration)
    if timeout is not None and timeout <= 0:
        check.error(check.at(spec, "timeout"), "'llm.timeout' must be longer than 0s")
    key = _vault_or_env(check, spec, "api_key", "llm") if "api_key" in spec else None
    if key is not None and key.vault and (key.vault.startswith("sk-") or len(key.vault) >= 40):
        check.error(check.at(spec, "api_key"), "'llm.api_key' looks like a key itself: store it with `goex-proxy "
                                               "secrets set NAME` and name NAME here, or use {env: NAME}")
    return LLM(base_url.rstrip("/"), model, key, timeout or 120.0)


def _sandbox(check: Checker, top: YMap, base: Path) -> Sandbox:
    spec = check.mapping(top.get("sandbox", YMap()), "sandbox", check.at(top, "sandbox"), _SANDBOX_KEYS) or YMap()

    def paths(key: str) -> tuple[Path, ...]:
        out = []
        for text in check.strings(spec, key, f"sandbox.{key}") or []:
            path = Path(text).expanduser()
            if not path.is_absolute() and not text.startswith("~"):
                path = base / path
            out.append(Path(os.path.abspath(path)))
        return tuple(out)

    pass_env = tuple(check.strings(spec, "pass_env", "sandbox.pass_env") or [])
    for name in pass_env:
        if not _ENV_NAME.fullmatch(name):
            check.error(check.at(spec, "pass_env"), f"'sandbox.pass_env' entry {name!r} is not a variable name")
    most = spec.get("max_processes", Sandbox.max_processes)
    if not isinstance(most, int) or isinstance(most, bool) or not 1 <= most <= PID_MAX_LIMIT:
        # past Linux's own limit, the jail's pids cgroup refused it (and the jail ran uncapped, "no pids cgroup can
        # be made here"), and setrlimit an OverflowError
        check.error(check.at(spec, "max_processes"), "'sandbox.max_processes' must be a whole number from 1 to "
                                                     f"{PID_MAX_LIMIT} (got {most!r:.40})")
        most = Sandbox.max_processes
    return Sandbox(paths("hide"), paths("expose"), paths("allow_sockets"), pass_env, most)


def _vault_or_env(check: Checker, parent: YMap, key: str, where: str) -> SecretRef | None:
    """A secret named by its vault entry (a string) or `{env: NAME}`; never a value written into the config."""
    value = parent.get(key)
    if isinstance(value, str) and value:
        return SecretRef(vault=value)
    if isinstance(value, YMap):
        env = check.mapping(value, f"{where}.{key}", check.at(parent, key), {"env"}, {"env"})
        if env is not None and "env" in env and not (isinstance(env["env"], str) and _ENV_NAME.fullmatch(env["env"])):
            # was taken for no secret at all, without a word: the credential then silently left out
            check.error(check.at(env, "env"), f"'{where}.{key}.env' must name an environment variable (got "
                                              f"{env['env']!r:.60})")
            return None
        return SecretRef(env=env["env"]) if env is not None and isinstance(env.get("env"), str) else None
    check.error(check.at(parent, key), f"'{where}.{key}' must name a vault secret or be {{env: NAME}} "
                                       "(secrets are never written into the config)")
    return None


def _credentials(check: Checker, raw: Any, pos: tuple[int, int]) -> dict[str, Credential]:
    out: dict[str, Credential] = {}
    if raw is None:
        return out
    if not isinstance(raw, YMap):
        check.error(pos, "'credentials' must be a mapping of name to credential")
        return out
    oauth_secrets: dict[str, str] = {}  # vault secret -> the OAuth2 credential whose tokens it holds
    for name, spec in raw.items():
        where = f"credentials.{name}"
        c = check.mapping(spec, where, raw.value_pos[name], _CREDENTIAL_KEYS, {"secret", "inject"})
        if c is None:
            continue
        ref = _vault_or_env(check, c, "secret", where)
        hosts_key = "hosts" if "hosts" in c else "host"
        patterns = check.strings(c, hosts_key, f"{where}.{hosts_key}") or []
        if not patterns:
            check.error(c.pos, f"'{where}' must bind the secret to at least one host ('hosts')")
        hosts = []
        for pattern in patterns:
            try:
                hosts.append(compile_host(pattern))
            except ValueError as exc:
                check.error(check.at(c, hosts_key), f"'{where}.{hosts_key}' {pattern!r} {exc}")
                continue
            if len([label for label in pattern.split(".") if label and not any(ch in label for ch in "*?{}")]) < 2:
                check.error(check.at(c, hosts_key), f"'{where}.{hosts_key}' {pattern!r} is too broad for a secret: "
                                                    "name at least a domain, like *.example.com")
        schemes = check.strings(c, "schemes", f"{where}.schemes") or ["https"]
        for scheme in schemes:
            if scheme not in ("http", "https"):
                check.error(check.at(c, "schemes"), f"'{where}.schemes' has {scheme!r} (expected http or https)")
        paths = None
        if "paths" in c:
            paths = []
            for pattern in check.strings(c, "paths", f"{where}.paths") or []:
                try:
                    paths.append(compile_path(pattern))
                except ValueError as exc:
                    check.error(check.at(c, "paths"), f"'{where}.paths' {pattern!r} {exc}")
        methods = check.strings(c, "methods", f"{where}.methods")
        for key, given in (("methods", methods), ("paths", paths)):
            if given is not None and not given:  # `methods: []` bound the secret to every method, as if left out
                check.error(check.at(c, key), f"'{where}.{key}' must not be empty (leave it out to bind the secret "
                                              f"to every {key[:-1]})")
        env_names = check.strings(c, "env", f"{where}.env") or []
        for env_name in env_names:
            if not _ENV_NAME.fullmatch(env_name):
                check.error(check.at(c, "env"), f"'{where}.env' {env_name!r} is not an environment variable name")
        injection = _injection(check, c, where)
        if injection is not None and injection.kind == "oauth2" and ref is not None:
            if ref.vault is None:
                check.error(check.at(c, "secret"), f"'{where}.secret' must name a vault secret: the proxy stores the "
                                                   "tokens it refreshes there")
            elif ref.vault in oauth_secrets:
                check.error(check.at(c, "secret"), f"'{where}.secret' {ref.vault!r} already holds the tokens of "
                                                   f"{oauth_secrets[ref.vault]!r}: two credentials refreshing one "
                                                   "refresh token would revoke each other's")
            else:
                oauth_secrets[ref.vault] = name
        if ref is not None and injection is not None and hosts:
            out[name] = Credential(name, ref, tuple(hosts), injection,
                                   frozenset(m.upper() for m in methods) if methods else None,
                                   tuple(paths) if paths is not None else None, tuple(env_names), frozenset(schemes))
    return out


def parse_config(doc: Any, file: Path, check: Checker) -> Config:
    """Build a Config from a parsed document, recording every problem on `check`."""
    top = configfile.top_level(check, doc)
    base = file.parent
    audit = configfile.parse_audit(check, top, base)
    state_dir = audit.state_dir
    listen = check.parsed(top, "listen", "listen", _listen) or ("127.0.0.1", 8080)

    agents: dict[str, Agent] = {}
    raw_agents = top.get("agents", YMap())
    if check.mapping(raw_agents, "agents", check.at(top, "agents"), set(raw_agents) if isinstance(raw_agents, dict) else set()) is not None:
        for name, spec in raw_agents.items():
            where = f"agents.{name}"
            if not _AGENT_NAME.fullmatch(name):
                check.error(raw_agents.key_pos[name], f"agent name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)")
            a = check.mapping(spec, where, check.at(raw_agents, name), {"token"}, {"token"})
            token = _secret(check, a, "token", f"{where}.token") if a is not None and "token" in a else None
            if a is not None and token is not None and token.inline is not None and (short := weak_token(token.inline)):
                check.error(check.at(a, "token"), f"'{where}.token' {short}")
            if token is not None:
                agents[name] = Agent(name, token)

    policies: list[PolicySource] = []
    for _, item, pos in check.items(top.get("policies", yamlsrc.YList()), "policies", check.at(top, "policies")):
        ref, narrowed = item, None
        if isinstance(item, YMap):
            entry = check.mapping(item, "policies[]", pos, {"use", "agents"}, {"use"})
            ref = entry.get("use") if entry else None
            narrowed = check.strings(item, "agents", "policies[].agents")
        if narrowed is not None and not narrowed:
            check.error(pos, "'policies[].agents' must not be empty (leave it out to keep the file's own agents)")
        if not isinstance(ref, str):
            check.error(pos, "'policies' entries must be a path, builtin:NAME, or {use: ..., agents: [...]} "
                             f"(got {yamlsrc.type_name(ref)})")
            continue
        try:
            policies.append(PolicySource(ref, resolve(ref, base), frozenset(narrowed) if narrowed else None))
        except ValueError as exc:
            check.error(pos, f"policy {ref!r} {exc}")

    undo_packs: list[Path] = []
    if "undo_rules" in top:
        refs = check.strings(top, "undo_rules", "undo_rules") or []
    else:  # every shipped pack, the generic REST conventions last
        refs = [f"builtin:{n}" for n in undo_names() if n != "rest"] + ["builtin:rest"]
    for ref in refs:
        try:
            undo_packs.append(resolve_undo(ref, base))
        except ValueError as exc:
            check.error(check.at(top, "undo_rules"), f"undo pack {ref!r} {exc}")

    upstream = check.mapping(top.get("upstream", YMap()), "upstream", check.at(top, "upstream"),
                             {"routes", "extra_ca", "block_private_networks", "allow_private", "resolver"}) or YMap()
    routes: dict[str, Route] = {}
    raw_routes = upstream.get("routes") or YMap()
    if isinstance(raw_routes, YMap):
        for host, target in raw_routes.items():
            try:
                routes[host_key(host)] = _route(target)
            except ValueError as exc:
                check.error(raw_routes.value_pos[host], f"'upstream.routes.{host}' {exc}")
    else:
        check.error(check.at(upstream, "routes"), "'upstream.routes' must be a mapping of host to URL")
    extra_ca = tuple((base / Path(p).expanduser()).resolve() for p in check.strings(upstream, "extra_ca", "upstream.extra_ca") or [])
    for path in extra_ca:
        try:
            found = path.is_file()
        except (OSError, ValueError) as exc:  # a name longer than the file system takes (NUL is refused above)
            check.error(check.at(upstream, "extra_ca"), f"'upstream.extra_ca' file {str(path)[:200]!r} cannot be "
                                                       f"read: {getattr(exc, 'strerror', None) or exc}")
            continue
        if not found:
            check.error(check.at(upstream, "extra_ca"), f"'upstream.extra_ca' file {str(path)!r} does not exist")
        elif (problem := _ca_file_problem(path)) is not None:
            check.error(check.at(upstream, "extra_ca"), f"'upstream.extra_ca' file {str(path)!r} {problem}")

    block_private = upstream.get("block_private_networks", True)
    if not isinstance(block_private, bool):
        check.error(check.at(upstream, "block_private_networks"),
                    f"'upstream.block_private_networks' must be true or false (got {block_private!r})")
        block_private = True
    allow_private = tuple(check.strings(upstream, "allow_private", "upstream.allow_private") or [])
    for allowed in allow_private:
        try:
            parse_allow(allowed)
        except ValueError as exc:
            check.error(check.at(upstream, "allow_private"), f"'upstream.allow_private' entry {allowed!r} {exc}")
    resolver = None
    if (server := check.string(upstream, "resolver", "upstream.resolver")) is not None:
        from .net.resolver import parse_server  # imports mitmproxy's DNS codec: only when a resolver is configured

        try:
            resolver = parse_server(server)
        except ValueError as exc:
            check.error(check.at(upstream, "resolver"), f"'upstream.resolver' {exc}")

    return Config(
        file=file,
        state_dir=state_dir,
        listen_host=listen[0],
        listen_port=listen[1],
        agents=agents,
        policies=tuple(policies),
        audit_db=audit.audit_db,
        max_body_bytes=audit.max_body_bytes,
        retention=audit.retention,
        wait_for_reads=audit.wait_for_reads,
        routes=routes,
        extra_ca=extra_ca,
        credentials=_credentials(check, top.get("credentials"), check.at(top, "credentials")),
        undo_packs=tuple(undo_packs),
        block_private=block_private,
        allow_private=allow_private,
        resolver=resolver,
        llm=_llm(check, top),
        sandbox=_sandbox(check, top, base),
        limits=parse_limits(check, top),
        approvals=parse_approvals(check, top),
        console=parse_console(check, top, base),
        databases=parse_databases(check, top, base, set(agents)),
    )


#: Config fields a running proxy (and its database gateway) cannot take over from an edited file (what `config.yaml`
#: calls them); `databases.listen` is one too (dbconfig.restart_changes says when it changed).
RESTART_ONLY = {"listen_host": "listen", "listen_port": "listen", "state_dir": "state_dir", "audit_db": "audit.db",
                "extra_ca": "upstream.extra_ca", "limits": "limits", "approvals": "approvals", "console": "console"}


def as_running(edited: Config, running: Config) -> Config:
    """An edited config as a running process takes it over: what only a restart changes kept as it runs."""
    return replace(edited, databases=replace(edited.databases, listen=running.databases.listen),
                   **{name: getattr(running, name) for name in RESTART_ONLY})


def load_config(path: Path | None = None) -> Config:
    """Read and validate the config file; raise StateError if it is missing, ConfigError if it is wrong."""
    file, doc, check = configfile.read(path)
    config = parse_config(doc, file, check)
    check.raise_if_errors()
    return config


def config_problems(path: Path) -> list[Problem]:
    """Every problem in a config file, for `policy check`-style reporting."""
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.problems
    return []
