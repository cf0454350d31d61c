"""ProxyState: what the stages share — the config, the live policy set (hot-reloaded), limit counters, the audit writer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar, cast

from mitmproxy import ctx, exceptions
from mitmproxy.proxy import mode_specs

from goex_proxy.audit import store as audit
from goex_proxy.audit.offload import OffloadedWriter
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.bodyparse import collector_paused
from goex_proxy.config import RESTART_ONLY, Config, as_running, load_config
from goex_proxy.credentials.binding import Bindings
from goex_proxy.credentials.kinds import Credential
from goex_proxy.credentials.oauth import TokenSet
from goex_proxy.credentials.redact import SecretScrubber
from goex_proxy.credentials.sigv4 import AwsKeys
from goex_proxy.credentials.tokens import TokenKeeper
from goex_proxy.credentials.vault import Vault
from goex_proxy.dbconfig import restart_changes
from goex_proxy.errors import AuditError, GoexError
from goex_proxy.net import upstream
from goex_proxy.net.egress import Pins
from goex_proxy.policy.engine import PolicySet
from goex_proxy.policy.limits import LimitCounters
from goex_proxy.policy.load import load_policy_set
from goex_proxy.undo.plan import UndoRule
from goex_proxy.undo.rules import load_packs

T = TypeVar("T")

log = logging.getLogger(__name__)


class ProxyState:
    """Loads the config once (option `goex_config`), then keeps the policy set current and the audit writer open."""

    #: mitmproxy options without which the pipeline could be bypassed, and why; checked on every change.
    REQUIRED_OPTIONS = {
        "connection_strategy": ("lazy", "an eager proxy connects upstream before the policy has decided"),
        "stream_large_bodies": (None, "a streamed body is sent upstream before the policy sees it"),
        "ignore_hosts": ([], "traffic to ignored hosts is relayed without any hook: no policy, no audit"),
        "allow_hosts": ([], "traffic to hosts not listed is relayed without any hook: no policy, no audit"),
        "mode": (["regular"], "another mode listens elsewhere than the config's listen address, or takes traffic no "
                              "agent sent through the proxy"),
    }
    #: mitmproxy options whose addons change a request, or answer it, after the pipeline has decided, injected and
    #: recorded it (they run after script addons): a sticky credential or a remapped host would send a secret where
    #: its binding does not allow, unrecorded. Checked only where mitmproxy defines them (not under `goex-proxy run`).
    AFTER_THE_PIPELINE = ("map_remote", "map_local", "modify_headers", "modify_body", "stickyauth", "stickycookie",
                          "server_replay", "client_replay", "upstream_auth")
    #: mitmproxy's own addons that only its interactive tools (mitmweb, the console) load: they show every flow while
    #: it is in flight, with the real secret injected, and let a person intercept and edit it.
    INTERACTIVE_ADDONS = ("view", "intercept")

    def __init__(self, config: Config | None = None, policies: PolicySet | None = None,
                 writer_process: bool = False, share_writer: bool = False, writer_link: socket.socket | None = None
                 ) -> None:
        self.config = config
        self.policies = policies or PolicySet()
        self.limits = LimitCounters()
        self.writer: AuditWriter | None = None
        #: The record stage's rows written by a process of its own (`run`): its Python off this one's GIL.
        self.writer_process = writer_process
        #: That process also writes the other workers' rows (the first of several: `link_worker`); or this worker's
        #: end of its link to the first's (`writer_link`), written to instead of a process of its own.
        self.share_writer, self.writer_link = share_writer, writer_link
        self.secrets: dict[str, str] = {}  # credential name -> secret, in memory only
        self.aws_keys: dict[str, AwsKeys] = {}  # aws_sigv4 credentials whose secret holds valid keys
        self.tokens: TokenKeeper | None = None  # OAuth2 access tokens, refreshed as needed
        self.undo_rules: tuple[UndoRule, ...] = ()  # for the undo class of each audit row
        self.pins = Pins()  # the SSRF guard's checked addresses, shared with the proxy's own requests
        self.undo_token: str | None = None  # set by `undo` on its own in-process proxy: the identity it replays as
        self._client: Any = None  # httpx.AsyncClient for the proxy's own requests, made on first use
        self.scrubber = SecretScrubber({})
        self._forms: dict[str, str] = {}
        self._mtimes: dict[Path, float | None] = {}
        self._watch: asyncio.Task[None] | None = None
        self._bindings: tuple[object, Bindings] | None = None  # the config's credentials and their index by host
        self.file_config: Config | None = None  # the config as its file said, where the running one differs from it
        #: what must happen before the audit writer closes at shutdown (the gate answers what still waits)
        self.before_close: list[Callable[[], Awaitable[None]]] = []
        #: what must hear that the config, policies or vault were read again (whether or not the edit was applied)
        self.after_reload: list[Callable[[], None]] = []
        if config is not None:
            self.open()  # ready before the proxy listens (`goex-proxy run`); under mitmdump, configure() opens it

    def load(self, loader: object) -> None:
        add = loader.add_option  # type: ignore[attr-defined]
        add("goex_config", str, "", "Path of the goex-proxy config.yaml to run with.")
        add("goex_reload_interval", float, 1.0, "Seconds between checks of the policy files for changes.")

    def check_options(self) -> None:
        """Refuse mitmproxy options, and tools, under which the pipeline could be bypassed or its secrets shown."""
        if any(ctx.master.addons.get(name) for name in self.INTERACTIVE_ADDONS):
            raise exceptions.OptionsError(
                "goex-proxy does not run under mitmweb or mitmproxy's console: their interactive flow view shows each "
                "request while it is in flight, with the real secret injected, and lets anyone at it intercept and "
                "edit it; run the addons under mitmdump (or use `goex-proxy run`)")
        required = dict(self.REQUIRED_OPTIONS)
        if self.config is not None:
            why = f"the config says listen: {self.config.listen_host}:{self.config.listen_port}"
            required["listen_host"] = (self.config.listen_host, why + "; mitmproxy listens on all interfaces by default")
            required["listen_port"] = (self.config.listen_port, why)
        for name in self.AFTER_THE_PIPELINE:
            if name in ctx.options and getattr(ctx.options, name):
                raise exceptions.OptionsError(
                    f"goex-proxy refuses the mitmproxy option {name} (it is {getattr(ctx.options, name)!r}): it changes "
                    "or answers requests after the pipeline decided, injected and recorded them, so a credential could "
                    "go where its binding does not allow, unrecorded; leave it unset")
        for name, (value, why) in required.items():
            if self._option(name) != value:
                raise exceptions.OptionsError(f"goex-proxy needs the mitmproxy option {name}={value} ({why}); "
                                              f"it is {getattr(ctx.options, name)!r}")

    @staticmethod
    def _option(name: str) -> Any:
        """An option's value as mitmproxy uses it (an unset listen port is the regular mode's 8080)."""
        value = getattr(ctx.options, name)
        return mode_specs.ProxyMode.parse("regular").listen_port(value) if name == "listen_port" else value

    def configure(self, updated: set[str]) -> None:
        if "goex_config" in updated and ctx.options.goex_config:
            try:
                self.config = load_config(Path(ctx.options.goex_config))
                self.policies = load_policy_set(self.sources())
            except GoexError as exc:
                raise exceptions.OptionsError(str(exc)) from None
        self.check_options()  # after loading: the listen address comes from the config; before anything listens
        if self.config is not None and self.writer is None:
            self.open()

    def sources(self) -> list[tuple[Path, frozenset[str] | None]]:
        assert self.config is not None
        return self.config.policy_sources

    def load_secrets(self) -> None:
        """Read every credential's secret (vault or environment) into memory, and the spellings to scrub."""
        assert self.config is not None
        credentials = list(self.config.credentials.values())
        refs = [c.secret for c in credentials] + [c.inject.oauth2.client_secret for c in credentials
                                                  if c.inject.oauth2 and c.inject.oauth2.client_secret]
        vault = Vault(self.config.state_dir).all() if any(r.vault for r in refs) else {}
        self.secrets = {c.name: value for c in credentials if (value := c.secret.reveal(vault))}
        self.aws_keys = {}
        for c in credentials:
            if c.inject.kind == "aws_sigv4" and c.name in self.secrets:
                try:
                    self.aws_keys[c.name] = AwsKeys.loads(self.secrets[c.name])
                except ValueError as exc:
                    log.error("credential %s: its secret (%s) is not usable: %s", c.name, c.secret.describe(), exc)
            if c.inject.oauth2 is not None:
                if self.tokens is None:
                    self.tokens = TokenKeeper(self.config, self.upstream_client, self.remember_tokens)
                client_secret = c.inject.oauth2.client_secret.reveal(vault) if c.inject.oauth2.client_secret else None
                stored = self.secrets.get(c.name)
                self.tokens.load(c.name, TokenSet.loads(stored) if stored else None, client_secret)
                if client_secret:
                    self._forms.update({form: c.placeholder for form in c.spellings(client_secret)})
        # Spellings of secrets that were rotated or removed stay: an upstream may still echo an old one.
        self._forms.update({form: c.placeholder for c in credentials if c.name in self.secrets
                            for form in c.forms(self.secrets[c.name])})
        self.scrubber = SecretScrubber(self._forms, base=self.scrubber)

    def upstream_client(self) -> Any:
        """The client for requests goex-proxy makes itself (token refreshes, retries), routed like forwarded ones."""
        assert self.config is not None
        if self._client is None:
            self._client = upstream.client(self.config)
        return self._client

    def remember_tokens(self, credential: Credential, tokens: TokenSet) -> None:
        """A refreshed token set: scrub its new tokens from now on (the keeper saves it to the vault)."""
        self.secrets[credential.name] = tokens.dumps()
        self._forms.update({form: credential.placeholder for form in credential.forms(self.secrets[credential.name])})
        self.scrubber = SecretScrubber(self._forms, base=self.scrubber)

    def credential_for(self, host: str, method: str, path: str) -> Credential | None:
        """The first credential bound to this host, method and path, if any."""
        assert self.config is not None
        credentials = self.config.credentials
        if self._bindings is None or self._bindings[0] is not credentials:  # a config loaded anew has its own
            self._bindings = (credentials, Bindings(credentials.values()))
        return self._bindings[1].first(host, method, path)

    def open(self) -> None:
        """Load the secrets, open the audit writer and seed the limit counters from what it recorded before."""
        assert self.config is not None
        self.load_secrets()
        self.undo_rules = load_packs(list(self.config.undo_packs))
        self.writer = AuditWriter(self.config.audit_db, Seal(self.config.state_dir))
        if self.writer_process:  # it takes every call it does not take over to the thread writer it wraps
            self.writer = cast(AuditWriter, OffloadedWriter(self.writer, share=self.share_writer,
                                                            link=self.writer_link))
            self.writer_link = None  # the writer holds it now
        self._seed_limits(self.policies.limit_windows())
        self._mtimes = self._stat()

    def _seed_limits(self, windows: dict[str, float | None]) -> None:
        """Load the recorded hits of these limited rules, so a restart or reload does not reset their counts."""
        assert self.config is not None
        with closing(audit.connect(self.config, readonly=True)) as conn:
            self.limits.seed(list(audit.load_limit_hits(conn, windows, time.time())))

    def running(self) -> None:
        try:
            self.check_options()
        except exceptions.OptionsError as exc:
            log.error("%s; shutting down", exc)
            ctx.master.shutdown()
            return
        if self.config is not None and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_policies())

    def audit(self) -> AuditWriter:
        """The audit writer; AuditError (one line) once it is closed: a request still in flight while goex-proxy stops
        is refused, as any request the log cannot take first."""
        if self.writer is None:
            raise AuditError("the audit log is closed: goex-proxy is stopping")
        return self.writer

    async def done(self) -> None:
        for stop in self.before_close:
            await stop()
        if self._watch is not None:
            self._watch.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _stat(self) -> dict[Path, float | None]:
        assert self.config is not None
        out: dict[Path, float | None] = {}
        for path in [self.config.file] + [p for p, _ in self.sources()] + [Vault(self.config.state_dir).path]:
            try:
                out[path] = path.stat().st_mtime_ns
            except OSError:
                out[path] = None
        return out

    async def _watch_policies(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.goex_reload_interval)
            try:
                await self.reload_if_changed()
            except Exception:  # the watcher must outlive any one bad edit; the last good policies stay in force
                log.exception("policy reload failed; keeping the last good policies")

    async def reload_if_changed(self) -> bool:
        """Reload the config, the policy files and the vault if any changed; whatever is invalid is logged and the last
        good one kept. True if the policy set was replaced.

        Files are read, parsed and compiled in a worker thread (a 10,000-rule policy takes about a second), so the
        proxy goes on deciding requests meanwhile, under the policies in force; the new set then replaces them in one
        assignment on the event loop, between two requests' decisions."""
        mtimes = self._stat()
        changed = {p for p in mtimes if mtimes[p] != self._mtimes.get(p)}
        if not changed:
            return False
        self._mtimes = mtimes
        try:
            return await self._reload(changed)
        finally:
            for hear in self.after_reload:
                hear()

    async def _reload(self, changed: set[Path]) -> bool:
        assert self.config is not None
        vault = Vault(self.config.state_dir).path
        if self.config.file in changed and await self._reload_config(reread_vault=vault in changed):
            self._mtimes = self._stat()  # the new config may name other policy files
            return True
        if vault in changed:
            try:
                self.load_secrets()
                log.info("secrets reloaded from the vault")
            except GoexError as exc:
                log.error("vault reload rejected; keeping the secrets already loaded: %s", exc)
        if not changed & {p for p, _ in self.sources()}:
            return False
        try:
            policies = await _off_loop(load_policy_set, self.sources())
        except GoexError as exc:
            log.error("policy reload rejected; keeping the last good policies:\n%s", exc)
            return False
        self._install(policies)
        return True

    def _install(self, policies: PolicySet) -> None:
        known = self.policies.limit_windows()
        changed = {k: v for k, v in policies.limit_windows().items() if k not in known or known[k] != v}
        if changed:
            # A new rule, a re-added one or a longer window: count from what was recorded, not from memory.
            self.limits.forget(changed)
            self._seed_limits(changed)
        self.policies = policies
        log.info("policies reloaded: %s", ", ".join(p.name for p in policies.policies) or "(none)")

    async def _reload_config(self, reread_vault: bool = False) -> bool:
        """Apply an edited config.yaml with the policy set it names, all or nothing: agents, credentials, routes,
        egress, the policy list and undo packs at once; `listen`, `limits`, the state and audit paths and extra CAs
        only at a restart. True if it was applied (and the policies with it)."""
        assert self.config is not None
        previous = self.config
        secrets_read = False
        try:
            fresh, later, applied, undo_rules, policies = await _off_loop(self._read_config, previous)
            self._use_config(fresh)
            if "credentials" in applied or reread_vault:
                secrets_read = True
                self.load_secrets()
        except Exception as exc:  # nothing of a rejected edit stays in force, whatever the failure
            self._use_config(previous)
            if secrets_read:
                self.load_secrets()
            what = str(exc) if isinstance(exc, GoexError) else f"{type(exc).__name__}: {exc}"
            log.error("config reload rejected; keeping the last good config and policies:\n%s", what)
            return False
        self.undo_rules = undo_rules
        if {"routes", "resolver"} & set(applied) and self._client is not None:
            client, self._client = self._client, None
            asyncio.get_running_loop().create_task(client.aclose())
        if later:
            log.warning("config: %s take%s effect only when goex-proxy restarts", ", ".join(later),
                        "" if len(later) > 1 else "s")
        if applied or not later:
            log.info("config reloaded: %s", ", ".join(RELOADED[name] for name in applied) or "nothing the proxy uses "
                     "changed")
        self._install(policies)
        return True

    def _read_config(self, previous: Config) -> tuple[Config, list[str], list[str], tuple[UndoRule, ...], PolicySet]:
        """Read the edited config and what it names (in a worker thread: it changes nothing): the config as it will
        apply, the restart-only settings it changed, the settings it applies, the undo rules and the policy set."""
        fresh = load_config(previous.file)
        later = sorted({RESTART_ONLY[name] for name in config_changes(self.file_config or previous, fresh)
                        if name in RESTART_ONLY})
        later += restart_changes((self.file_config or previous).databases, fresh.databases)
        fresh = as_running(fresh, previous)
        applied = config_changes(previous, fresh)
        undo_rules = load_packs(list(fresh.undo_packs)) if "undo_packs" in applied else self.undo_rules
        return fresh, later, applied, undo_rules, load_policy_set(fresh.policy_sources)

    def _use_config(self, config: Config) -> None:
        self.config = config
        if self.tokens is not None:
            self.tokens.config = config


#: How the reload message names each config field it applied.
RELOADED = {"agents": "agents", "policies": "the policy list", "max_body_bytes": "audit.max_body_bytes",
            "routes": "upstream.routes", "credentials": "credentials", "undo_packs": "undo_rules",
            "block_private": "upstream.block_private_networks", "allow_private": "upstream.allow_private",
            "resolver": "upstream.resolver", "llm": "llm", "sandbox": "sandbox",
            "databases": "databases (the gateway's databases and their agents)",
            "retention": "audit.retention (from the next prune)", "wait_for_reads": "audit.wait_for_reads"}


def config_changes(old: Config, new: Config) -> list[str]:
    """The config fields whose values differ, in the config's own order (the file path never does)."""
    return [f.name for f in dataclasses.fields(Config) if f.name != "file" and getattr(old, f.name) != getattr(new, f.name)]


async def _off_loop(work: Callable[..., T], *args: Any) -> T:
    """`work` in a worker thread, without the cyclic garbage collector meanwhile: building a large policy set makes
    enough objects to start full collections, each of which holds the interpreter (and so the event loop) for 0.1 to
    0.2 s with 10,000 rules; the objects are freed by reference counting as before, cycles at the next collection."""
    with collector_paused():
        return await asyncio.to_thread(work, *args)

