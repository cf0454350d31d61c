"""The console's policies page: the loaded files and their rules, `policy check`'s problems (undo.policycheck), and
the what-if of a pasted draft against the log (policy.whatif, as `policy test FILE --against-log`). Nothing is saved:
the draft lives in a private temporary directory for the length of one replay."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..audit import store as audit
from ..config import Config
from ..errors import GoexError, Problem
from ..policy import whatif
from ..policy.load import check_policy_text, load_policy_set
from ..undo.policycheck import check_file, unconfined_irreversible

#: A draft larger than this is refused (the form's own limit is the console's).
DRAFT_LIMIT = 60 * 1024
#: How many changed rows the page lists.
SHOWN = 500


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
    (or added), as `policy test DRAFT --against-log` does."""
    out = WhatIf()
    if len(draft.encode()) > DRAFT_LIMIT:
        out.error = f"the draft is larger than {DRAFT_LIMIT // 1024} KiB"
        return out
    policy, out.problems = check_policy_text(draft, "draft")
    if policy is None or any(p.severity == "error" for p in out.problems):
        out.error = out.error or "the draft has errors; nothing was replayed"
        return out
    out.name = policy.name
    with tempfile.TemporaryDirectory(prefix="goex-console-draft-") as tmp:
        path = Path(tmp) / "draft.yaml"
        path.write_text(draft, encoding="utf-8")
        try:
            current, candidate = whatif.policy_sets(config.policy_sources, [path])
        except GoexError as exc:
            out.error = str(exc)
            return out
    conn = audit.connect(config, readonly=True)
    try:
        out.seen, changes = whatif.replay(audit.iter_rows(conn), current, candidate)
    finally:
        conn.close()
    out.changes, out.more = changes[:SHOWN], max(0, len(changes) - SHOWN)
    return out
