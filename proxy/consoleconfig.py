"""The `console:` section: where the web console is served, the TLS it needs beyond this machine and the address
people open it at; and the files a running console leaves in the state directory, by which `goex-proxy console link`
finds it and the SSRF guard keeps agents from it wherever it listens."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .approvalconfig import check_url, is_loopback, netloc, parse_host_port
from .yamlsrc import Checker, YMap

#: The console's address in `init`'s starter config and for `goex-proxy console` without a section.
DEFAULT_LISTEN = ("127.0.0.1", 8791)
_KEYS = {"listen", "tls_cert", "tls_key", "public_url"}
#: The folder of the state directory where each running console keeps a file (0600) with its address and base URL.
RUNNING_DIR = "consoles"


@dataclass(frozen=True)
class Console:
    """The `console:` section; the default (no section) serves no console from `run`."""

    listen: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    public_url: str | None = None   # what people open it at (a name, or a reverse proxy in front), no trailing slash

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None


def exposure_problem(listen: tuple[str, int], tls: bool, public_url: str | None = None) -> str | None:
    """Why the console may not be served at this address: it shows the log and acts on it, so beyond this machine only
    over TLS, and only under the name people open it at (it answers no other Host)."""
    if is_loopback(listen[0]):
        return None
    if not tls:
        return (f"the console would listen on {netloc(*listen)}, which is not a loopback address: it shows the audit "
                "log and can approve and undo requests, so serve it beyond this machine only over TLS (set "
                "console.tls_cert and console.tls_key) and console.public_url, or listen on 127.0.0.1")
    if public_url is None:
        return (f"the console would listen on {netloc(*listen)}, which is not a loopback address: set "
                "console.public_url to the https:// address people open it at (it answers under no other name)")
    return None


def _path(check: Checker, spec: YMap, key: str, base: Path) -> Path | None:
    value = check.string(spec, key, f"console.{key}")
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _public_url(check: Checker, spec: YMap) -> str | None:
    url = check.string(spec, "public_url", "console.public_url")
    if url is None:
        return None
    parts = urlsplit(url)
    problem = check_url(url)
    if problem is None and (parts.path not in ("", "/") or parts.query or parts.fragment):
        problem = "must be a scheme, a host and an optional port, with no path, query or fragment"
    if problem is not None:
        check.error(check.at(spec, "public_url"), f"'console.public_url' {problem} (got {url!r})")
        return None
    return url.rstrip("/")


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
    public_url = _public_url(check, spec)
    if (cert is None) != (key is None):
        check.error(spec.pos, "'console' needs both tls_cert and tls_key, or neither")
        return Console()
    if listen is None:
        return Console()
    if (problem := exposure_problem(listen, cert is not None, public_url)) is not None:
        check.error(check.at(spec, "listen"), f"'console.listen': {problem}")
        return Console()
    return Console(listen, cert, key, public_url)


@dataclass(frozen=True)
class RunningConsole:
    """A console that runs over a state directory, as its file says: where it listens and the base of its links."""

    listen: tuple[str, int]
    base: str
    pid: int
    path: Path


def running_file(state_dir: Path, listen: tuple[str, int]) -> Path:
    return state_dir / RUNNING_DIR / f"{listen[0].replace(':', '_')}-{listen[1]}.json"


def say_running(state_dir: Path, listen: tuple[str, int], base: str) -> Path:
    """Leave the file of a console that has started (0600; removed when it stops; a stale one names a dead pid)."""
    folder = state_dir / RUNNING_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    path = running_file(state_dir, listen)
    text = json.dumps({"listen": list(listen), "base": base, "pid": os.getpid()})
    temporary = path.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(path.with_suffix(".tmp"), path)
    return path


def _alive(pid: int, written: float) -> bool:
    """Whether `pid` is a process of this user that was already running when its console's file was written (a stale
    file's pid may since have been given to another process)."""
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, in clock ticks since boot
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return owner == os.getuid() and started <= written + 1.0


def _read(path: Path) -> RunningConsole | None:
    """A console's file as it left it: a regular file of this user's, not a link, readable by no one else."""
    try:
        mode = path.lstat()
        if not stat.S_ISREG(mode.st_mode) or mode.st_uid != os.getuid() or mode.st_mode & 0o077:
            return None
        found: Any = json.loads(path.read_text(encoding="utf-8"))
        host, port = found["listen"]
        running = RunningConsole((str(host), int(port)), str(found["base"]), int(found["pid"]), path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return running if _alive(running.pid, mode.st_mtime) else None


def running_consoles(state_dir: Path) -> list[RunningConsole]:
    """The consoles that run over this state directory (their process alive), the most recently started first."""
    try:
        paths = sorted((state_dir / RUNNING_DIR).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
    return [r for r in map(_read, paths) if r is not None]


class RunningListens:
    """Where the consoles of a state directory listen, for the SSRF guard (at every request): the folder is listed
    again only when its modification time changes (a console started or stopped). That time is read through a
    descriptor kept open (`_folder_stamp`), not by path: a lookup in the state directory waits behind its renames (an
    audit anchor's at every commit), and cost a request up to 100 µs. The path is looked at again every `RECHECK_S`
    seconds, in case the folder was replaced."""

    RECHECK_S = 1.0
    SAME_TICK_NS = 50_000_000

    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / RUNNING_DIR
        self._seen: tuple[int, list[tuple[str, int]]] | None = None
        self._checked = float("-inf")
        self._absent = False  # the folder could not be opened at the last look by path

    def __call__(self) -> list[tuple[str, int]]:
        now = time.monotonic()
        fresh = now - self._checked >= self.RECHECK_S
        if fresh:
            self._checked = now
        elif self._absent:
            return []
        stamp = _folder_stamp(self.folder, reopen=fresh)
        self._absent = stamp is None
        if stamp is None:
            return []
        # A folder's time moves in clock ticks (4 ms): a change in the tick of the last listing leaves it as it was.
        if self._seen is None or self._seen[0] != stamp or time.time_ns() - stamp < self.SAME_TICK_NS:
            self._seen = (stamp, [r.listen for r in running_consoles(self.folder.parent)])
        return self._seen[1]


#: Open descriptors of consoles' folders, the last few used, shared by the configs of a state directory (a reload makes
#: a new config). Not one per config, closed by a finalizer: the garbage collector runs finalizers wherever it happens
#: to, deep in a hostile JSON body's parse say, where Python can no longer call them.
_FOLDER_FDS: collections.OrderedDict[Path, int] = collections.OrderedDict()
_FOLDER_FDS_KEPT = 8
_FOLDER_FDS_LOCK = threading.Lock()


def _folder_stamp(folder: Path, reopen: bool) -> int | None:
    """The folder's modification time through its kept descriptor (opened by path when it has none, or `reopen`;
    the folder made if missing, so that a console started later changes its time); None if it cannot be opened."""
    with _FOLDER_FDS_LOCK:
        fd = _FOLDER_FDS.pop(folder, None)
        if fd is not None and reopen:
            os.close(fd)
            fd = None
        if fd is None:
            with contextlib.suppress(OSError):
                folder.mkdir(mode=0o700, exist_ok=True)
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return None
        _FOLDER_FDS[folder] = fd
        while len(_FOLDER_FDS) > _FOLDER_FDS_KEPT:
            os.close(_FOLDER_FDS.popitem(last=False)[1])
        return os.fstat(fd).st_mtime_ns
