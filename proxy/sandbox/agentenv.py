"""The environment an agent runs with: its proxy URL (identity included), the CA for every common runtime, no NO_PROXY."""

from __future__ import annotations

import json
import shlex
import socket
from pathlib import Path
from urllib.parse import quote

from ..config import Config
from ..errors import GoexError, StateError

#: Variables that name a CA bundle, one per runtime or tool that reads its own.
CA_VARIABLES = (
    "SSL_CERT_FILE",        # OpenSSL, Python's ssl/urllib/aiohttp, httpx, Ruby, git's OpenSSL
    "REQUESTS_CA_BUNDLE",   # requests
    "CURL_CA_BUNDLE",       # curl
    "NODE_EXTRA_CA_CERTS",  # Node.js (added to its built-in roots)
    "GIT_SSL_CAINFO",       # git
    "PIP_CERT",             # pip
    "AWS_CA_BUNDLE",        # boto3 / the AWS CLI
    "NPM_CONFIG_CAFILE",    # npm
    "DENO_CERT",            # Deno
)
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
#: Variables removed from the agent's environment so that nothing skips the proxy.
UNSET_VARIABLES = ("NO_PROXY", "no_proxy")


def agent_token(config: Config, agent: str) -> str:
    """An agent's token; GoexError naming the problem for an unknown agent or one whose token is not set."""
    spec = config.agents.get(agent)
    if spec is None:
        known = ", ".join(sorted(config.agents)) or "none"
        raise GoexError(f"no agent named {agent!r} in {config.file} (agents: {known})")
    token = spec.token.reveal()
    if token is None:
        raise GoexError(f"agent {agent!r} has no token: {spec.token.describe()} is not set")
    return token


def proxy_url(config: Config, agent: str, host: str | None = None) -> str:
    """`http://AGENT:TOKEN@host:port` for an agent of this config."""
    token = agent_token(config, agent)
    host = host or proxy_address(config)[0]
    netloc = f"[{host}]" if ":" in host else host
    return f"http://{quote(agent, safe='')}:{quote(token, safe='')}@{netloc}:{config.listen_port}"


def database_urls(config: Config, agent: str, host: str | None = None, ca_path: str | None = None) -> dict[str, str]:
    """`postgresql://AGENT:TOKEN@host:port/NAME` for each database the agent may use, by the variable it is given
    in: the gateway's address and the agent's own identity, never the database's password. Under `databases.tls:
    require` the URL also has the client check the gateway (`tls_options`)."""
    databases = config.databases.for_agent(agent)
    if not databases:
        return {}
    token = agent_token(config, agent)
    host = host or gateway_address(config)[0]
    netloc = f"[{host}]" if ":" in host else host
    port = config.databases.listen[1]
    options = tls_options(config, host, ca_path or str(config.ca_cert))
    return {d.env: f"postgresql://{quote(agent, safe='')}:{quote(token, safe='')}@{netloc}:{port}/"
                   f"{quote(d.name, safe='')}{options}" for d in databases}


def tls_options(config: Config, host: str, ca: str) -> str:
    """What a URL to the gateway adds for TLS: under `require`, TLS checked against goex-proxy's CA, the name too
    when the certificate is for `host` (verify-full); under `offer`, nothing (a client's default, prefer, uses TLS
    unchecked; one that wants it checked adds `sslmode=verify-full&sslrootcert=` the CA, as SSL_CERT_FILE names it),
    so that clients which refuse options they do not know (SQLAlchemy's asyncpg) keep working."""
    if config.databases.tls != "require":
        return ""
    from ..db.agenttls import names

    mode = "verify-full" if host.lower() in names(config.databases.listen[0]) else "verify-ca"
    return f"?sslmode={mode}&sslrootcert={quote(ca, safe='/')}"


def agent_env(config: Config, agent: str, *, proxy_host: str | None = None, ca_path: str | None = None) -> dict[str, str]:
    """The variables to set for an agent (NO_PROXY and no_proxy must additionally be unset)."""
    url = proxy_url(config, agent, proxy_host)
    ca = ca_path or str(config.ca_cert)
    env = {name: url for name in PROXY_VARIABLES}
    env.update({name: ca for name in CA_VARIABLES})
    env["NODE_USE_ENV_PROXY"] = "1"  # Node.js 24+: fetch and http honour HTTP(S)_PROXY
    env["GOEX_PROXY_AGENT"] = agent
    for credential in config.credentials.values():  # unchanged SDK code finds a token; the proxy swaps it
        env.update({name: credential.placeholder for name in credential.env})
    env.update(database_urls(config, agent, proxy_host, ca_path))
    return env


def withheld(config: Config) -> set[str]:
    """Variables the agent must not inherit: the vault key, every `{env:}` secret (a credential's, an OAuth2 client
    secret, an approvals channel's URL or token), every agent's token variable."""
    from ..credentials.vault import KEY_ENV

    names = {KEY_ENV, *UNSET_VARIABLES}
    names.update(c.secret.env for c in config.credentials.values() if c.secret.env)
    oauth = [c.inject.oauth2 for c in config.credentials.values() if c.inject.oauth2 is not None]
    names.update(o.client_secret.env for o in oauth if o.client_secret is not None and o.client_secret.env)
    channels = [ref for ch in config.approvals.notify for ref in (ch.url, ch.token) if ref is not None]
    names.update(ref.env for ref in channels if ref.env)
    names.update(a.token.env for a in config.agents.values() if a.token.env)
    if config.llm is not None and config.llm.api_key is not None and config.llm.api_key.env:
        names.add(config.llm.api_key.env)  # the supervisor's model key is not the agent's
    names.update(d.password.env for d in config.databases.by_name.values() if d.password.env)
    names.update({"PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE"})  # libpq's own ways to a password
    return names


def apply(base: dict[str, str], env: dict[str, str], config: Config) -> dict[str, str]:
    """`base` with the agent's variables set, and the bypass and secret-bearing variables removed."""
    drop = withheld(config)
    out = {k: v for k, v in base.items() if k not in drop}
    out.update(env)
    return out


def render(env: dict[str, str], fmt: str, ca_pem: str) -> str:
    """The settings as shell exports, JSON, or a Docker `--env-file`."""
    if fmt == "shell":
        lines = [f"unset {' '.join(UNSET_VARIABLES)}"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        return "\n".join(lines) + "\n"
    if fmt == "json":
        return json.dumps({"env": env, "unset": list(UNSET_VARIABLES), "ca_cert_pem": ca_pem}, indent=2) + "\n"
    if fmt == "docker":
        return "".join(f"{k}={v}\n" for k, v in env.items()) + "NO_PROXY=\nno_proxy=\n"
    raise GoexError(f"unknown format {fmt!r} (expected shell, json or docker)")


def proxy_address(config: Config) -> tuple[str, int]:
    """Where a client on this machine reaches the proxy (a wildcard address by its family's loopback: a socket bound
    to `::` may take IPv6 only)."""
    loopback = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
    return loopback.get(config.listen_host, config.listen_host), config.listen_port


def gateway_address(config: Config) -> tuple[str, int]:
    """Where a client on this machine reaches the database gateway (a wildcard address by its family's loopback)."""
    loopback = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
    host, port = config.databases.listen
    return loopback.get(host, host), port


#: How long the proxy at the configured address has to prove itself (the TLS handshake of `listening`).
PROOF_SECONDS = 3.0


def listening(config: Config) -> bool:
    """Whether this config's goex-proxy listens at its address. Something that accepts connections there must prove
    that it is: a TLS handshake with it must present a certificate signed by this state directory's CA, whose key only
    goex-proxy holds. Else an agent would be sent (with its token) to whatever holds the port, and wait on it."""
    import ssl

    check_ca(config)
    address = proxy_address(config)
    try:
        sock = socket.create_connection(address, timeout=2)
    except OSError:
        return False
    context = ssl.create_default_context(cafile=str(config.ca_cert))
    context.check_hostname = False  # the chain proves who answers; the name is goex-proxy's to make up
    try:
        with sock:
            sock.settimeout(PROOF_SECONDS)
            with context.wrap_socket(sock, server_hostname="goex-proxy.invalid"):
                return True
    except (OSError, ssl.SSLError) as exc:
        why = "it did not answer in time" if isinstance(exc, TimeoutError) else f"its answer was not this goex-proxy's ({exc})"
        raise StateError(f"something other than this config's goex-proxy is listening on {address[0]}:{address[1]}: "
                         f"{why}; stop it, or change `listen` in {config.file}") from None


def check_listening(config: Config) -> None:
    """Fail with a clear message when no proxy listens where the agent would be sent."""
    if not listening(config):
        host, port = proxy_address(config)
        raise StateError(f"no goex-proxy is listening on {host}:{port}; start it with "
                         f"`goex-proxy run --config {config.file}` in another shell (or use `exec --jail`, which "
                         "starts one for the command)")


def check_ca(config: Config) -> None:
    if not Path(config.ca_cert).is_file():
        raise StateError(f"the CA certificate {config.ca_cert} is missing; run `goex-proxy init`")
