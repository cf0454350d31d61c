"""The console's policies page: the loaded files and their rules, `policy check`'s problems (undo.policycheck), and
the what-if of a pasted draft against the log (policy.whatif, as `policy test FILE --against-log`), run in a process
of its own (console.whatifjob) with a time limit, so that no draft can hold up the proxy this process may also be.
Nothing is saved: the draft lives in a private temporary directory for the length of one replay."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import GoexError, Problem
from ..policy import whatif
from ..policy.load import load_policy_set
from ..undo.policycheck import check_file, unconfined_irreversible
from . import whatifjob

log = logging.getLogger(__name__)

#: A draft larger than this is refused (the form's own limit is the console's).
DRAFT_LIMIT = 60 * 1024
#: How many changed rows the page lists.
SHOWN = 500
#: A what-if is killed after this many seconds (wall clock); its process may use this much CPU (a backstop should
#: this process go away first) and map this much memory.
TIMEOUT_S = 60.0
CPU_S = 75
MEMORY_BYTES = 2 << 30
#: One what-if at a time: each takes a core while it runs.
_one_at_a_time = threading.Lock()


@dataclass(frozen=True)
class Loaded:
    """One loaded policy file: its name, path, agents (None: all), mode, and each rule's key, effect and summary."""

    name: str
    file: str
    agents: tuple[str, ...] | None
    mode: str
    rules: tuple[tuple[str, str, str], ...]


@dataclass
class Overview:
    loaded: list[Loaded] = field(default_factory=list)
    load_error: str = ""
    checked: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def overview(config: Config) -> Overview:
    """What is loaded and what `policy check` (with no files, over this config) says of it: each policy file and undo
    pack checked, and the allow rules that let an agent make an irreversible call with no limit."""
    out = Overview()
    try:
        policies = load_policy_set(config.policy_sources)
        out.loaded = [Loaded(p.name, p.file, tuple(sorted(p.agents)) if p.agents is not None else None, p.mode,
                             tuple((r.name, r.effect, r.summary()) for r in p.rules)) for p in policies.policies]
    except GoexError as exc:
        out.load_error = str(exc)
    targets = [p.path for p in config.policies] + list(config.undo_packs)
    out.checked = [str(t) for t in targets]
    for target in targets:
        out.problems += check_file(target)
    out.problems += unconfined_irreversible(config)
    return out


@dataclass
class WhatIf:
    """A draft's problems, and when it loads, how many logged requests the policy decided and those it changes."""

    problems: list[Problem] = field(default_factory=list)
    error: str = ""
    name: str = ""
    seen: int = 0
    changes: list[whatif.Change] = field(default_factory=list)
    more: int = 0


def what_if(config: Config, draft: str) -> WhatIf:
    """Replay the log under the configured policies and under them with the draft in place of the policy of its name
    (or added), as `policy test DRAFT --against-log` does: in a process of its own (console.whatifjob), under
    TIMEOUT_S, CPU_S and MEMORY_BYTES, one at a time. The draft is read there only, never in this process."""
    out = WhatIf()
    if len(draft.encode()) > DRAFT_LIMIT:
        out.error = f"the draft is larger than {DRAFT_LIMIT // 1024} KiB"
        return out
    if not _one_at_a_time.acquire(blocking=False):
        out.error = "another what-if is running; try again when it has ended (each stops within " \
                    f"{TIMEOUT_S:g} s)"
        return out
    try:
        with tempfile.TemporaryDirectory(prefix="goex-console-draft-") as tmp:
            path = Path(tmp) / "draft.yaml"
            path.write_text(draft, encoding="utf-8")
            job = {"draft": str(path), "audit_db": str(config.audit_db), "shown": SHOWN,
                   "sources": [[str(p), sorted(a) if a is not None else None] for p, a in config.policy_sources]}
            return _result(_in_own_process(job))
    finally:
        _one_at_a_time.release()


def _in_own_process(job: dict[str, Any]) -> dict[str, Any]:
    """Run the what-if job in a child process, killed at TIMEOUT_S; its result, or {"error": why it stopped}."""
    command = [sys.executable, "-I", "-m", f"{__package__}.whatifjob", str(CPU_S), str(MEMORY_BYTES)]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "TMPDIR", "LANG", "LC_ALL", "SYSTEMROOT")}
    started = time.monotonic()
    try:
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=env, start_new_session=True)
    except OSError as exc:
        log.error("console: cannot start a what-if process: %s", exc)
        return {"error": f"the what-if could not start its process: {exc.strerror or exc}"}
    try:
        said, errors = child.communicate(json.dumps(job).encode(), timeout=TIMEOUT_S)
        stopped = ""
    except subprocess.TimeoutExpired:
        child.kill()
        said, errors = child.communicate()
        log.warning("console: a what-if ran for %g s and was stopped", TIMEOUT_S)
        stopped = (f"the what-if stopped after {TIMEOUT_S:g} s: the draft took longer than that to replay against the "
                   "log (a condition that nests comprehensions over long lists is the usual cause); nothing was "
                   "changed, and `goex-proxy policy test FILE --against-log` runs it with no time limit")
    took = time.monotonic() - started
    result: dict[str, Any] = {}
    for line in said.decode("utf-8", "replace").splitlines():  # the draft's problems, then the replay's result
        try:
            part = json.loads(line)
        except ValueError:
            break
        if isinstance(part, dict):
            result.update(part)
    if stopped or child.returncode != 0 or "error" not in result and "seen" not in result:
        last = (errors.decode("utf-8", "replace").strip().splitlines()[-1:] or [""])[0]
        how = stopped or f"the what-if {_how_it_stopped(child.returncode, took, last)}; nothing was changed"
        if not stopped:
            log.warning("console: %s (%s)", how, last[:300])
        result["error"] = how
    return result


def _how_it_stopped(code: int, took: float, said: str) -> str:
    """How the what-if's process ended, from its exit status and the last line it wrote to stderr."""
    if code in (whatifjob.OUT_OF_MEMORY, -signal.SIGABRT, -signal.SIGSEGV, -signal.SIGBUS) or \
            "MemoryError" in said or "failed to map segment" in said:
        return (f"stopped after {took:.1f} s: it needed more than the {MEMORY_BYTES >> 20} MiB of memory it may use "
                "(a condition that builds long strings or lists, in comprehensions or by concatenation, is the usual "
                "cause)")
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        return (f"stopped after {took:.1f} s: it used the {CPU_S} s of CPU it may use (a condition that nests "
                "comprehensions over long lists is the usual cause)")
    return f"failed (its process ended with status {code})"


def _result(found: dict[str, Any]) -> WhatIf:
    out = WhatIf(problems=[Problem(**p) for p in found.get("problems", [])], error=str(found.get("error") or ""),
                 name=str(found.get("name") or ""), seen=int(found.get("seen") or 0),
                 more=int(found.get("more") or 0))
    out.changes = [whatif.Change(**c) for c in found.get("changes", [])]
    return out
