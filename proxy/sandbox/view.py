"""What a jail shows the agent: the workspace it may change, the supervisor's files it must never see, the paths it
may read but not write, the host's Unix sockets it must not reach, and the environment it inherits."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import ids
from ..audit.writer import write_lock
from ..config import Config
from ..errors import GoexError

#: The person's well-known credential stores, hidden from every jail unless `sandbox.expose` names one.
CREDENTIAL_STORES = ("~/.ssh", "~/.aws", "~/.config/gcloud", "~/.netrc", "~/.git-credentials", "~/.docker/config.json",
                     "~/.kube", "~/.config/gh", "~/.gnupg", "~/.pgpass", "~/.azure", "~/.password-store", "~/.pypirc",
                     "~/.npmrc",
                     # git's credential store where XDG puts it, and the token files of common command-line tools
                     "~/.config/git/credentials", "~/.vault-token", "~/.cargo/credentials.toml", "~/.cargo/credentials",
                     "~/.gem/credentials", "~/.terraform.d/credentials.tfrc.json", "~/.pulumi/credentials.json",
                     "~/.my.cnf", "~/.s3cfg", "~/.config/rclone/rclone.conf", "~/.config/hub", "~/.databrickscfg",
                     # the desktop's keyring, and browsers' profiles: their cookies are signed-in sessions
                     "~/.local/share/keyrings", "~/.mozilla", "~/.config/google-chrome", "~/.config/chromium",
                     "~/.config/BraveSoftware", "~/.config/microsoft-edge", "~/.config/vivaldi", "~/.config/opera",
                     # shells' and clients' histories: a password or token typed on a command line stays in them
                     "~/.bash_history", "~/.zsh_history", "~/.histfile", "~/.local/share/fish/fish_history",
                     "~/.python_history", "~/.psql_history", "~/.mysql_history", "~/.sqlite_history",
                     "~/.node_repl_history", "~/.rediscli_history", "~/.irb_history")
#: The machine's own secrets, which only root may read, hidden from every jail unless `sandbox.expose` names one: run
#: as root, a jailed command is uid 0 to the host's files (password hashes, SSH host keys, TLS private keys).
SYSTEM_SECRETS = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/security/opasswd",
                  "/etc/ssl/private", "/etc/ssh/ssh_host_*_key", "/var/lib/sss/secrets", "/etc/krb5.keytab")
#: Ordinary variables a jailed command inherits from the person's environment (and LC_*); nothing else but
#: `sandbox.pass_env` and the agent's own settings.
INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "COLORTERM", "TZ", "NO_COLOR",
                 "COLUMNS", "LINES")
#: goex-proxy's packages, each of which may live in a folder of its own.
PACKAGES = ("goex_proxy", "goex_proxy.addons", "goex_proxy.policies", "goex_proxy.sandbox")
#: Directories every jail gets fresh and empty (so their sockets and scratch files are out of view).
SCRATCH = ("/tmp", "/var/tmp", "/run", "/dev")


@dataclass(frozen=True)
class View:
    """The paths a jail is built from (all absolute and resolved)."""

    workspace: str
    cwd: str
    hide: tuple[str, ...]
    protect: tuple[str, ...]
    reveal: tuple[str, ...]
    sockets: tuple[str, ...]


def _real(path: Path | str) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def supervisor_paths(config: Config) -> list[str]:
    """Every file of goex-proxy's own the agent must neither read nor write: the state directory (vault, its key, the
    CA's key, the audit database, run layers), the config, every policy and undo pack, the audit database wherever it
    is, and the console's TLS key wherever it is."""
    paths = [config.state_dir, config.file, *(p.path for p in config.policies), *config.undo_packs]
    if config.console.tls_key is not None:
        paths.append(config.console.tls_key)
    db = config.audit_db
    paths += [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), db.with_name(db.name + "-journal"),
              ids.tags_folder(db), write_lock(db)]
    return sorted({_real(p) for p in paths if os.path.lexists(p)})


#: What a person appends to a copy they keep of a directory (`~/.ssh.bak`, `~/.aws-old`, `~/.gnupg~`, `~/.ssh.2024`).
_DIRECTORY_COPY = re.compile(r"(~|[.\-_ ](bak|old|orig|backup|save|saved|copy|prev)\w*|[.\-_ ]\d[\w.\-]*)", re.IGNORECASE)


def copies_beside(paths: set[str]) -> set[str]:
    """The files beside each hidden file that an editor or a person left as its copy (`config.yaml~`, `#config.yaml#`,
    `.config.yaml.swp`, `config.yaml.bak`), and the copies a person kept of a hidden directory (`~/.ssh.bak`,
    `~/.aws-old`): they hold the same secrets (every agent's token, a netrc's passwords, private keys). Beside a file,
    regular files only; beside a directory, only names that say they are a copy of it: another directory named like a
    hidden one is the person's own."""
    out = set()
    for path in paths:
        directory = os.path.isdir(path) and not os.path.islink(path)
        if not directory and not os.path.isfile(path):
            continue
        parent, base = os.path.split(path)
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            copy = os.path.join(parent, name)
            if name == base or os.path.islink(copy):  # a link shows what it points at, hidden if it is one of these
                continue
            if directory:
                if name.startswith(base) and _DIRECTORY_COPY.fullmatch(name[len(base):]):
                    out.add(copy)
            elif name.lstrip(".#").startswith(base.lstrip(".")) and os.path.isfile(copy):
                out.add(copy)
    return out


def python_paths() -> list[str]:
    """The Python environment goex-proxy runs from and its own code: read-only in every jail."""
    from .. import __file__ as package_file

    candidates = [sys.prefix, sys.exec_prefix, sys.base_prefix, os.path.dirname(package_file)]
    # sys.path[0] is the directory of the script or, under `python -m`, the current directory: not an environment.
    candidates += [p for p in sys.path[1:] if p and os.path.isdir(p)]
    for name in PACKAGES:  # where the installer put them (an editable install maps each to its own folder)
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            candidates += list(spec.submodule_search_locations or [])
    return sorted({_real(p) for p in candidates})


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo: which filesystem (device), which of its directories, mounted where."""

    device: str
    root: str
    point: str


def mounts(mountinfo: str) -> list[Mount]:
    """The mounts a mountinfo text lists (octal escapes such as \\040 undone)."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            out.append(Mount(fields[2], _unescape(fields[3]), _unescape(fields[4])))
    return out


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def aliases(path: str, table: list[Mount]) -> list[str]:
    """Other places the same directory or file shows up: where a bind mount shows (part of) the filesystem `path` is
    on. Hiding a path must cover these too, or a second mount of it would show what the first hides."""
    holders = [m for m in table if _inside(path, m.point)]
    if not holders:
        return []
    home = max(holders, key=lambda m: len(m.point))
    within = os.path.normpath(os.path.join(home.root, os.path.relpath(path, home.point)))
    found = []
    for other in table:
        if other.device == home.device and other != home and _inside(within, other.root):
            alias = os.path.normpath(os.path.join(other.point, os.path.relpath(within, other.root)))
            if alias != path:
                found.append(alias)
    return found


def host_sockets() -> list[str]:
    """Paths of the Unix sockets bound on this machine: in this network namespace (the host's, /proc/net/unix) and in
    every other one a process here is in (a container's, an `unshare -n` service's: their sockets are not in this
    namespace's list, yet a path of theirs the jail can see reaches them), those that are sockets at that path here."""
    found = set(_bound_sockets("/proc/net/unix"))
    seen = {_namespace("/proc/self/ns/net")}
    with contextlib.suppress(OSError):
        for pid in os.listdir("/proc"):
            if pid.isdigit() and (ns := _namespace(f"/proc/{pid}/ns/net")) is not None and ns not in seen:
                seen.add(ns)
                found.update(s for s in _bound_sockets(f"/proc/{pid}/net/unix") if _is_socket(s))
    return sorted(found)


def _namespace(link: str) -> str | None:
    """The namespace a /proc/PID/ns link names (None: the process is gone, or not ours to look at)."""
    try:
        return os.readlink(link)
    except OSError:
        return None


def _bound_sockets(table: str) -> list[str]:
    """The paths in a /proc net/unix table (a socket bound to a path; not an abstract or unnamed one)."""
    try:
        with open(table, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    return [fields[7] for line in lines if len(fields := line.split(None, 7)) == 8 and fields[7].startswith("/")]


def view_for(config: Config, workspace: Path, cwd: Path) -> View:
    """The view of a jail on `workspace`; a GoexError saying why when that workspace cannot be one."""
    ws = _real(workspace)
    if not os.path.isdir(ws):
        raise GoexError(f"the workspace {workspace} is not a directory")
    supervisor = supervisor_paths(config)
    exposed = {_real(p) for p in config.sandbox.expose}
    system = [found for pattern in SYSTEM_SECRETS for found in glob.glob(pattern)]  # those that are there
    stores = [_real(p) for p in (*CREDENTIAL_STORES, *system)] + [_real(p) for p in config.sandbox.hide]
    hidden_here = {p for p in stores if p not in exposed and os.path.lexists(p)} | set(supervisor)
    hidden_here |= {p for p in copies_beside(hidden_here) if p not in exposed}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            table = mounts(f.read())
    except OSError:
        table = []
    hidden = sorted(hidden_here | {a for p in hidden_here for a in aliases(p, table) if os.path.lexists(a)})
    python = python_paths()
    if ws == "/":
        raise GoexError("the workspace cannot be / : run from (or pass --workspace) the project directory the agent "
                        "may change")
    for path in hidden:
        if _inside(ws, path):
            raise GoexError(f"the workspace {ws} is inside {path}, which jails hide (goex-proxy's own files or a "
                            "credential store); choose another --workspace")
    for path in python:
        if _inside(ws, path):
            raise GoexError(f"the workspace {ws} is inside goex-proxy's own Python environment {path}; choose "
                            "another --workspace")
    for scratch in SCRATCH[1:]:
        if _inside(ws, scratch):
            raise GoexError(f"the workspace {ws} is under {scratch}, which every jail replaces; choose another "
                            "--workspace")
    here = _real(cwd)
    ca = _real(config.ca_cert)
    allowed = {_real(p) for p in config.sandbox.allow_sockets}
    sockets = [s for s in host_sockets() if s not in allowed and not any(_inside(s, d) for d in SCRATCH)
               and not any(_inside(s, h) for h in hidden)]
    return View(
        workspace=ws,
        cwd=here if _inside(here, ws) else ws,
        hide=tuple(hidden),
        # goex-proxy's Python, read-only where the jail would not show it as the host's: in the workspace (which the
        # agent may change) and under the scratch directories every jail gets fresh (a checkout under /tmp).
        protect=tuple(p for p in python if _inside(p, ws) or any(_inside(p, d) for d in SCRATCH[:-1])),
        reveal=tuple([ca] + sorted(p for p in allowed if _is_socket(p))),
        sockets=tuple(sockets),
    )


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def jail_env(base: dict[str, str], config: Config) -> dict[str, str]:
    """The part of the person's environment a jailed command inherits: ordinary variables and `sandbox.pass_env`."""
    keep = set(INHERITED_ENV) | set(config.sandbox.pass_env)
    return {k: v for k, v in base.items() if k in keep or k.startswith("LC_")}
