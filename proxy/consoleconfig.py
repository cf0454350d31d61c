"""The `console:` section: where the web console is served, and the TLS it needs beyond this machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .approvalconfig import is_loopback, netloc, parse_host_port
from .yamlsrc import Checker, YMap

#: The console's address in `init`'s starter config and for `goex-proxy console` without a section.
DEFAULT_LISTEN = ("127.0.0.1", 8791)
_KEYS = {"listen", "tls_cert", "tls_key"}


@dataclass(frozen=True)
class Console:
    """The `console:` section; the default (no section) serves no console from `run`."""

    listen: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None


def exposure_problem(listen: tuple[str, int], tls: bool) -> str | None:
    """Why the console may not be served at this address: it shows the log and acts on it, so beyond this machine only
    over TLS."""
    if is_loopback(listen[0]) or tls:
        return None
    return (f"the console would listen on {netloc(*listen)}, which is not a loopback address: it shows the audit log "
            "and can approve and undo requests, so serve it beyond this machine only over TLS (set console.tls_cert "
            "and console.tls_key), or listen on 127.0.0.1")


def _path(check: Checker, spec: YMap, key: str, base: Path) -> Path | None:
    value = check.string(spec, key, f"console.{key}")
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def parse_console(check: Checker, top: YMap, base: Path) -> Console:
    """The `console:` section, every problem recorded on `check`; `console: false` or no section, no console."""
    if "console" not in top or top["console"] is False:
        return Console()
    spec = check.mapping(top["console"], "console", check.at(top, "console"), _KEYS)
    if spec is None:
        return Console()
    listen = check.parsed(spec, "listen", "console.listen", lambda v: parse_host_port(v, "127.0.0.1:8791"))
    if "listen" not in spec:
        listen = DEFAULT_LISTEN
    cert, key = _path(check, spec, "tls_cert", base), _path(check, spec, "tls_key", base)
    if (cert is None) != (key is None):
        check.error(spec.pos, "'console' needs both tls_cert and tls_key, or neither")
        return Console()
    if listen is None:
        return Console()
    if (problem := exposure_problem(listen, cert is not None)) is not None:
        check.error(check.at(spec, "listen"), f"'console.listen': {problem}")
        return Console()
    return Console(listen, cert, key)
