"""`policy test --against-log`: decide each recorded request by the configured policies and by a candidate set, and
list the requests the two decide differently.

Policy is compared with policy, never with the recorded decision: a request refused by something else than the policy
(the SSRF guard, credential injection, a missing identity, a check before policy) or decided by a policy that has
changed since is no change the candidate files make."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ..errors import GoexError
from ..hostkey import host_key
from .engine import Decision, PolicySet, decide
from .limits import LimitCounters
from .load import load_policy, load_policy_set
from .requestview import RequestView, canonical_path

#: Rules that refuse a request before the policy sees it; their rows are not the policy's to change.
PRE_POLICY_RULES = ("identify", "request-fields", "request-target", "request-body", "request-upgrade")
#: How the reason of a refusal before policy starts (for the rules above, and any added later).
PRE_POLICY_REASON = "refused before policy"


@dataclass(frozen=True)
class Change:
    """A recorded request the candidate policies decide differently from the configured ones."""

    id: str
    ts: float
    agent: str | None
    method: str
    url: str
    before: str  # the configured policies' decision
    after: str  # the candidate's
    rule: str | None  # the candidate's rule, and its reason
    reason: str
    recorded: str  # what the log says happened (the policy then, or whatever refused it)
    body_truncated: bool


def policy_sets(configured: Sequence[tuple[Path, frozenset[str] | None]], files: Sequence[Path]
                ) -> tuple[PolicySet, PolicySet]:
    """The configured policies (path, agents), and the candidate set: each of `files` in place of the configured
    policy of the same name (keeping the config's agents for it), or added if none has its name."""
    candidates: dict[str, Path] = {}
    for f in files:
        name = load_policy(f).name
        if name in candidates:
            raise GoexError(f"{candidates[name]} and {f} are both policy {name!r}: test one of them at a time")
        candidates[name] = f
    replaced = [(candidates.pop(load_policy(path).name, path), agents) for path, agents in configured]
    current = load_policy_set(list(configured))
    candidate = load_policy_set(replaced + [(f, None) for f in candidates.values()])
    return current, candidate


def view_of_row(row: dict[str, Any]) -> RequestView:
    """Rebuild what the policy saw from an audit row (credential headers come back redacted)."""
    path, _, query = (row["path"] or "/").partition("?")
    headers = tuple((k.lower(), v) for k, v in json.loads(row["req_headers"] or "[]"))
    return RequestView(
        agent=row["agent"], method=(row["method"] or "").upper(), scheme=row["scheme"] or "https",
        host=host_key(row["host"] or ""), port=row["port"] or 443, path=canonical_path(path or "/") or path,
        query=tuple(parse_qsl(query, keep_blank_values=True)), headers=headers, body=row["req_body"] or b"",
    )


def reached_policy(row: dict[str, Any]) -> bool:
    """Whether the policy decided this row's request: not a tunnel, not refused before it (no identity, a check
    before policy), not answered by the proxy before any decision."""
    return (row["method"] != "CONNECT" and row["agent"] is not None and row["decision"] != "error"
            and row["rule"] not in PRE_POLICY_RULES and not (row["reason"] or "").startswith(PRE_POLICY_REASON))


class _Decider:
    """A policy set deciding rows oldest first, its limits counted as they would have counted under it alone."""

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies
        self.counters = LimitCounters()

    def __call__(self, view: RequestView, ts: float) -> Decision:
        d = decide(view, self.policies, ts, self.counters)
        if d.effect == "allow" and view.agent:
            self.counters.record(d.count_limits, view.agent, ts)
        return d


def replay(rows: Iterable[dict[str, Any]], current: PolicySet, candidate: PolicySet) -> tuple[int, list[Change]]:
    """Decide every row the policy decided, oldest first, by `current` and by `candidate` (each counting its own
    limits); return (rows decided, the rows they decide differently)."""
    now, then = _Decider(current), _Decider(candidate)
    changes: list[Change] = []
    seen = 0
    for row in rows:
        if not reached_policy(row):
            continue
        seen += 1
        view = view_of_row(row)
        before, after = now(view, row["ts"]), then(view, row["ts"])
        if before.label != after.label:
            truncated = (row["req_body_size"] or 0) > len(row["req_body"] or b"")
            changes.append(Change(row["id"], row["ts"], row["agent"], row["method"], row["url"], before.label,
                                  after.label, after.rule, after.report or after.reason, row["decision"] or "?",
                                  truncated))
    return seen, changes
