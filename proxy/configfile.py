"""The config file read on its own: where it is, its top level, and the settings every reader of the audit log needs
(`state_dir`, `audit`), which `log`, `show` and `log verify` read without the rest of the config.

Those commands then start in less time (the other sections' parsers are a seventh of `log`'s), and they still work
when another section is wrong: the log is what one reads while `run` refuses to start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import yamlsrc
from .durations import parse_duration
from .errors import ConfigError, Problem, StateError
from .yamlsrc import Checker, YMap

#: Every key the config's top level may have (`config.parse_config` reads them all).
TOP_KEYS = frozenset({"version", "state_dir", "listen", "agents", "credentials", "policies", "undo_rules", "audit",
                      "upstream", "llm", "sandbox", "limits", "approvals", "console", "databases"})
#: What `audit.max_body_bytes` is when the config leaves it out.
DEFAULT_MAX_BODY = 65536


def home() -> Path:
    """The state directory: `$GOEX_PROXY_HOME`, else `~/.goex-proxy`."""
    given = os.environ.get("GOEX_PROXY_HOME")
    return _expand_user(Path(given or "~/.goex-proxy"), "GOEX_PROXY_HOME" if given else "the state directory")


def _expand_user(path: Path, what: str) -> Path:
    """`path` with `~` expanded; a StateError for a `~user` of no user here (or no home at all), which pathlib raises
    as a RuntimeError (an internal error of every command)."""
    try:
        return path.expanduser()
    except RuntimeError:
        raise StateError(f"{what} {path} names the home directory of no user here") from None


def default_config_path() -> Path:
    return home() / "config.yaml"


@dataclass(frozen=True)
class AuditSettings:
    """Where the audit log and its seal are, and what it keeps (`state_dir` and `audit:`), validated."""

    state_dir: Path
    audit_db: Path
    max_body_bytes: int = DEFAULT_MAX_BODY
    retention: float | None = None  # `audit.retention`: rows older than this are pruned (None: kept)
    wait_for_reads: bool = False  # `audit.wait_for_reads`: a GET waits for its row's commit as a write does


def read(path: Path | None) -> tuple[Path, Any, Checker]:
    """The config file parsed, its path resolved, and the checker its problems go on: raise StateError if it is
    missing, ConfigError if it is not YAML or holds a NUL anywhere."""
    path = _expand_user(path, "the config") if path else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StateError(f"no config at {path}; run `goex-proxy init` first (or pass --config)") from None
    except OSError as exc:
        raise StateError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(str(path), 1, 1, f"config is not UTF-8 text (byte {exc.start})")]) from None
    doc, problems = yamlsrc.load(text, str(path))
    if problems:
        raise ConfigError(problems)
    check = Checker(str(path))
    _refuse_unwritable(check, doc, (1, 1))
    check.raise_if_errors()  # what follows makes paths of the values, which a NUL would end with a ValueError
    return path.resolve(), doc, check


def top_level(check: Checker, doc: Any) -> YMap:
    """The document's top level: a mapping of known keys, `version: 1` among them."""
    top = check.mapping(doc, "config", (1, 1), set(TOP_KEYS), {"version"}) or YMap()
    check.version_one(top)
    return top


def parse_audit(check: Checker, top: YMap, base: Path) -> AuditSettings:
    """`state_dir` (relative to the config's folder) and `audit:` (its db relative to the state directory)."""
    state_dir = _expanded(check, top, "state_dir", "state_dir", base)
    if not state_dir.is_absolute():
        try:
            state_dir = (base / state_dir).resolve()
        except RuntimeError as exc:  # pathlib's word for a symlink loop
            check.error(check.at(top, "state_dir"), f"'state_dir' cannot be followed: {exc}")
    audit = check.mapping(top.get("audit", YMap()), "audit", check.at(top, "audit"),
                          {"db", "max_body_bytes", "retention", "wait_for_reads"}) or YMap()
    db = _expanded(check, audit, "db", "audit.db", Path("audit.db"))
    max_body = audit.get("max_body_bytes", DEFAULT_MAX_BODY)
    if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body < 0:
        check.error(check.at(audit, "max_body_bytes"), f"'audit.max_body_bytes' must be a whole number ≥ 0 (got {max_body!r})")
        max_body = DEFAULT_MAX_BODY
    retention = None
    if audit.get("retention") is not None:
        try:
            retention = parse_duration(audit["retention"])
        except ValueError as exc:
            check.error(check.at(audit, "retention"), f"'audit.retention' {exc}")
    wait_for_reads = audit.get("wait_for_reads", False)
    if not isinstance(wait_for_reads, bool):
        check.error(check.at(audit, "wait_for_reads"), f"'audit.wait_for_reads' must be true or false (got {wait_for_reads!r})")
        wait_for_reads = True
    return AuditSettings(state_dir, db if db.is_absolute() else state_dir / db, max_body, retention, wait_for_reads)


def _expanded(check: Checker, parent: YMap, key: str, where: str, default: Path) -> Path:
    """The path at `key` (`default` without one), `~` expanded; a `~user` of no user here is an error where it is
    (pathlib raises a RuntimeError, which ended commands as an internal error)."""
    text = check.string(parent, key, where)
    try:
        return Path(text or default).expanduser()
    except RuntimeError:
        check.error(check.at(parent, key), f"'{where}' names the home directory of no user here (got {text!r})")
        return default


def load_audit_settings(path: Path | None = None) -> AuditSettings:
    """Only the audit log's settings from the config file (the rest unchecked but its top-level keys); raise as
    `read` does, and ConfigError if they are wrong."""
    file, doc, check = read(path)
    settings = parse_audit(check, top_level(check, doc), file.parent)
    check.raise_if_errors()
    return settings


def _refuse_unwritable(check: Checker, value: Any, pos: tuple[int, int]) -> None:
    """A NUL character (YAML's "\\0" escape) or a lone surrogate ("\\ud800") in any key or string of the config is an
    error where it is: no path, name, host or header may hold one, and as a path it ended commands with a ValueError
    or a UnicodeEncodeError (an internal error)."""
    if isinstance(value, YMap):
        for key, item in value.items():
            if (problem := _unwritable(key)) is not None:
                check.error(value.key_pos.get(key, pos), f"the key {key!r} {problem}")
            _refuse_unwritable(check, item, value.value_pos.get(key, pos))
    elif isinstance(value, yamlsrc.YList):
        for i, item in enumerate(value):
            _refuse_unwritable(check, item, value.item_pos[i] if i < len(value.item_pos) else pos)
    elif isinstance(value, str) and (problem := _unwritable(value)) is not None:
        check.error(pos, f"{value[:60]!r} {problem}, which no path, name or header may hold")


def _unwritable(text: str) -> str | None:
    """What in `text` no path or header can hold, if anything."""
    if "\0" in text:
        return "holds a NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone surrogate (it cannot be written as UTF-8)"
    return None
