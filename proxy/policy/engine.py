"""The pure policy core: rules, policies and `decide()`, which is default deny and where deny beats allow."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..durations import format_duration
from ..globs import Glob
from .cel import CelEvalError, Condition, bind
from .requestview import RepeatedKey, RequestView, reading_count, repeated_keys, value_readings, with_changes

Effect = Literal["allow", "deny"]
Mode = Literal["enforce", "report"]


@dataclass(frozen=True)
class Limit:
    """At most `count` allowed requests per agent, in any window of `per` seconds (or ever, if `per` is None)."""

    count: int
    per: float | None
    text: str

    def describe(self) -> str:
        return f"at most {self.count} per {self.text}" if self.per else f"at most {self.count} in all"


@dataclass(frozen=True)
class Wait:
    """A request that waits before it is sent: `hold` waits for a person (up to `seconds`, then `on_timeout`);
    `delay` is sent after `seconds` unless a person cancels it in that window."""

    kind: Literal["hold", "delay"]
    seconds: float
    on_timeout: Literal["deny", "send"] = "deny"

    def strictness(self) -> tuple[int, float]:
        """How much it keeps from happening: a hold beats a delay, a longer delay a shorter one."""
        return (2, 0.0) if self.kind == "hold" and self.on_timeout == "deny" else (1, self.seconds)

    def describe(self) -> str:
        if self.kind == "delay":
            return f"delay {format_duration(self.seconds)}"
        then = "" if self.on_timeout == "deny" else ", then send"
        return f"hold up to {format_duration(self.seconds)}{then}"


#: What `review:` may name: the undo classes a request has before it is sent.
REVIEW_CLASSES = ("exact", "needs-preimage", "lossy", "irreversible")


def waiting_as_strictly(allowed: Decision, other: Decision) -> Decision:
    """`allowed`, made to wait as long as another reading of the same request would (a server may run that one)."""
    if other.effect != "allow" or other.wait is None or other.wait == allowed.wait:
        return allowed
    return dataclasses.replace(allowed, wait=strictest((allowed.wait, other.wait)))


def strictest(waits: Iterable[Wait | None]) -> Wait | None:
    """The wait that keeps most from happening (None: none of them waits)."""
    found = [w for w in waits if w is not None]
    return max(found, key=Wait.strictness) if found else None


@dataclass(frozen=True)
class Routing:
    """How a server routes paths: ignoring case (`path_case: insensitive`), and treating `/a` and `/a/` as one route
    (`trailing_slash: optional`)."""

    fold_case: bool = False
    optional_slash: bool = False

    def __or__(self, other: Routing) -> Routing:
        if other is EXACT or other is self:
            return self
        fold, slash = self.fold_case or other.fold_case, self.optional_slash or other.optional_slash
        # Either side when it is already the answer: decide() calls this per rule, and allocates nothing then.
        if fold == other.fold_case and slash == other.optional_slash:
            return other
        if fold == self.fold_case and slash == self.optional_slash:
            return self
        return Routing(fold, slash)


#: Paths matched as written.
EXACT = Routing()
#: Paths matched as Express and many other routers do by default: in any case, with or without a trailing slash.
LENIENT = Routing(fold_case=True, optional_slash=True)


@dataclass(frozen=True)
class Rule:
    """One allow or deny rule; every criterion it has must match."""

    policy: str
    name: str
    effect: Effect
    hosts: tuple[Glob, ...] = ()
    methods: frozenset[str] | None = None
    paths: tuple[Glob, ...] | None = None
    agents: frozenset[str] | None = None
    when: Condition | None = None
    limit: Limit | None = None
    reason: str | None = None
    rewrite: bool = False      # allow only as the request's reversible twin (an undo rule's `twin`)
    protocol: str | None = None  # "tcp" or an HTTP Upgrade token; None: HTTP (a deny without one: any protocol)
    ports: frozenset[int] | None = None
    routing: Routing = EXACT     # how the server routes the paths this rule names (`path_case`, `trailing_slash`)
    accepts_duplicate_keys: bool = False  # `duplicate_keys: accept`: may allow a query or form with a key twice
    wait: Wait | None = None     # `hold:` or `delay:`: an allowed request waits before it is sent

    @property
    def key(self) -> str:
        return f"{self.policy}/{self.name}"

    def summary(self) -> str:
        methods = ",".join(sorted(self.methods)) if self.methods else "any method"
        paths = " ".join(p.pattern for p in self.paths) if self.paths else "/**"
        hosts = " ".join(h.pattern for h in self.hosts) or "any host"
        extra = f", {self.limit.describe()}" if self.limit else ""
        extra += f", {self.wait.describe()}" if self.wait else ""
        cond = f" when {self.when.source}" if self.when else ""
        ports = f" port {','.join(map(str, sorted(self.ports)))}" if self.ports else ""
        if self.protocol == "tcp":
            return f"raw TCP to {hosts}{ports} ('{self.name}'{extra})"
        upgrade = f" upgrading to {self.protocol}" if self.protocol else ""
        return f"{methods} {hosts}{paths}{ports}{upgrade}{cond} ('{self.name}'{extra})"

    def matches_plain(self, view: RequestView, host_known: bool = False, routing: Routing = EXACT) -> bool:
        """Everything but the CEL condition (`host_known`: the host index already matched the host; `routing`: how
        the host's server routes paths, besides what the rule itself declares)."""
        if self.agents is not None and view.agent not in self.agents:
            return False
        if (self.protocol or "http") != view.protocol and not (self.effect == "deny" and self.protocol is None):
            return False
        if self.ports is not None and view.port not in self.ports:
            return False
        if self.methods is not None and view.method not in self.methods:
            return False
        if not host_known and self.hosts and not any(h.matches(view.host) for h in self.hosts):
            return False
        if self.paths is None:
            return True
        how = self.routing if routing is EXACT else self.routing | routing
        if how is EXACT or not (how.fold_case or how.optional_slash):
            for glob in self.paths:   # a loop, not any(): a generator costs more than most rules' one glob
                if glob.matches(view.path):
                    return True
            return False
        for glob in self.paths:
            if glob.matches_path(view.path, how.fold_case, how.optional_slash):
                return True
        return False


@dataclass(frozen=True)
class Policy:
    """A named set of rules from one file, applying to some agents (None: all), enforced or only reported."""

    name: str
    file: str
    rules: tuple[Rule, ...]
    agents: frozenset[str] | None = None
    mode: Mode = "enforce"
    servers: tuple[tuple[Glob, Routing], ...] = ()   # `servers:`: host globs and how their servers route paths
    review: tuple[tuple[str, Wait | None], ...] = ()  # `review:`: undo class -> wait (None: pass, queued for review)
    sql_rules: tuple[Any, ...] = ()   # rules over SQL statements (`policy.sql.SqlRule`), for the database gateway

    def applies_to(self, agent: str | None) -> bool:
        return agent is not None and (self.agents is None or agent in self.agents)


@dataclass(frozen=True)
class Decision:
    """The outcome for one request: an effect, the rule that decided it, and why."""

    effect: Effect
    reason: str
    rule: str | None = None
    report: str | None = None
    count_limits: tuple[str, ...] = ()
    allowed_instead: tuple[str, ...] = ()
    rewrite: bool = False   # forward the request's reversible twin instead of it (the twin stage does)
    wait: Wait | None = None   # the allowing rules' strictest `hold:` or `delay:` (enforced policies only)

    @property
    def label(self) -> str:
        """What the audit log calls it: allow, deny, or report (allowed, but an enforced policy would deny)."""
        return "report" if self.effect == "allow" and self.report else self.effect


class LimitCounts(Protocol):
    def count(self, key: str, agent: str, per: float | None, now: float) -> int: ...

    def retry_after(self, key: str, agent: str, limit: Limit, now: float) -> float | None: ...


@dataclass(frozen=True)
class Candidate:
    """A rule that may apply to a host, with its policy, and whether the host index already matched the host."""

    rule: Rule
    policy: Policy
    host_known: bool
    order: int = 0   # its place in the linear scan: rules on literal hosts first, then the others, in policy order


#: Characters outside ASCII that case-insensitive matching (Python's `re` or RE2) reads as an ASCII letter.
_FOLDS_TO_ASCII = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def _segment_key(text: str) -> str:
    """How the path index files a request's path segments: lower-cased, so that a rule matching one in any case (a
    server's `path_case: insensitive`, a lenient router) is found under the same key as one matching it as written."""
    return text.lower() if text.isascii() else text.translate(_FOLDS_TO_ASCII).lower()


class _Node:
    """One node of a path index: rules whose globs' segments lead here, by what the next segment is."""

    __slots__ = ("literal", "star", "below", "end")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.star: _Node | None = None      # a segment with a wildcard that stays inside it (`*`, `?`, `{a,b}`)
        self.below: list[Candidate] = []    # may match this path and anything under it (`**`, or not indexable)
        self.end: list[Candidate] = []      # may match a path that ends here

    def walk(self, parts: list[str], out: list[Candidate]) -> None:
        """Add the candidates for a path's segment keys, and for the path with a last '/' added or taken away, in no
        particular order. Each node is at one depth and so is visited at most once: the time is bounded by the index's
        size, whatever the path."""
        n = len(parts)
        slashed = n > 0 and parts[-1] == ""   # '/a/': also '/a'; '/a': also '/a/'
        stack: list[tuple[_Node, int]] = [(self, 0)]
        while stack:
            node, i = stack.pop()
            out += node.below
            if i == n:
                out += node.end
                if not slashed:
                    for extra in (node.literal.get(""), node.star):
                        if extra is not None:
                            out += extra.below
                            out += extra.end
                continue
            if slashed and i == n - 1:
                out += node.end
            if node.star is not None:
                stack.append((node.star, i + 1))
            child = node.literal.get(parts[i])
            if child is not None:
                stack.append((child, i + 1))


class _PathIndex:
    """Candidate rules by the segments of their path globs: a rule is found for every path its globs could match, in
    any case and with or without a trailing slash (a superset; the rule itself then decides). Literal segments are
    children by their lower-cased text, segments with a wildcard inside them one `*` child, and `**` (or anything the
    index cannot read: braces spanning a '/', non-ASCII text) keeps the rule at that node for every path below."""

    def __init__(self, candidates: Iterable[Candidate]) -> None:
        self.root = _Node()
        for c in candidates:
            if c.rule.paths is None:
                self.root.below.append(c)
                continue
            for node, deep in dict.fromkeys(self._place(glob.pattern) for glob in c.rule.paths):
                (node.below if deep else node.end).append(c)

    def _place(self, pattern: str) -> tuple[_Node, bool]:
        node = self.root
        plain = pattern.isascii()
        for segment in (pattern.lower() if plain else pattern)[1:].split("/"):
            if "*" in segment or "?" in segment or "{" in segment or "}" in segment:
                if "**" in segment or segment.count("{") != segment.count("}"):
                    return node, True
                if node.star is None:
                    node.star = _Node()
                node = node.star
                continue
            if not plain:
                if not segment.isascii():
                    return node, True
                segment = segment.lower()
            child = node.literal.get(segment)
            if child is None:
                child = node.literal[segment] = _Node()
            node = child
        return node, False


def _segment_keys(paths: Iterable[str]) -> list[list[str]]:
    """What a path index walks for these paths (`_Node.walk`): each one's segment keys, found once for every index
    (none for what is not a path: raw TCP has only rules that match any path)."""
    return [_segment_key(path)[1:].split("/") if path.startswith("/") else [] for path in paths]  # '/' stay put


#: Hosts whose glob-host rules are remembered (a cache, cleared when full: agents name few hosts).
MOST_CACHED_HOSTS = 4096


@dataclass(frozen=True)
class PolicySet:
    """All loaded policies, with their rules indexed by literal host, then by path segments, so that a decision looks
    at few rules however many a host has."""

    policies: tuple[Policy, ...] = ()
    _by_host: dict[str, tuple[Candidate, ...]] = field(default_factory=dict, compare=False, repr=False)
    _wild: tuple[Candidate, ...] = field(default=(), compare=False, repr=False)
    _servers: tuple[tuple[Glob, Routing], ...] = field(default=(), compare=False, repr=False)
    _paths: dict[str, _PathIndex] = field(default_factory=dict, compare=False, repr=False)
    _wild_paths: _PathIndex = field(default_factory=lambda: _PathIndex(()), compare=False, repr=False)
    _wild_for: dict[str, frozenset[int]] = field(default_factory=dict, compare=False, repr=False)
    _reporting: dict[str, tuple[Candidate, ...]] = field(default_factory=dict, compare=False, repr=False)
    _alternatives: dict[tuple[str, str | None, int], tuple[str, ...]] = field(default_factory=dict, compare=False,
                                                                             repr=False)
    _indexed: bool = field(default=True, compare=False, repr=False)   # False: scan every candidate (tests compare)

    @classmethod
    def of(cls, policies: Iterable[Policy], indexed: bool = True) -> PolicySet:
        """The set of these policies; `indexed=False` makes every decision scan all candidates of the request's host
        (what the index must always agree with)."""
        policies = tuple(policies)
        by_host: dict[str, list[tuple[Rule, Policy]]] = {}
        wild_rules: list[tuple[Rule, Policy]] = []
        for policy in policies:
            for rule in policy.rules:
                literals = [h.literal for h in rule.hosts]
                if rule.hosts and None not in literals:
                    for lit in dict.fromkeys(literals):
                        by_host.setdefault(lit, []).append((rule, policy))  # type: ignore[arg-type]
                else:
                    wild_rules.append((rule, policy))
        # Candidates on a literal host come first in a scan, then the rest: `order` keeps that order across indexes.
        hosted = {h: tuple(Candidate(r, p, True, i) for i, (r, p) in enumerate(rules)) for h, rules in by_host.items()}
        offset = max((len(c) for c in hosted.values()), default=0)
        wild = tuple(Candidate(r, p, False, offset + i) for i, (r, p) in enumerate(wild_rules))
        servers = tuple(server for policy in policies for server in policy.servers)
        if not indexed:
            return cls(policies, hosted, wild, servers, _indexed=False)
        return cls(policies, hosted, wild, servers, {h: _PathIndex(c) for h, c in hosted.items()}, _PathIndex(wild))

    def candidates(self, host: str) -> tuple[Candidate, ...]:
        """Every rule that may apply to this host, in the order a decision scans them."""
        return self._by_host.get(host, ()) + self._wild

    def path_candidates(self, host: str, paths: Iterable[str]) -> list[Candidate]:
        """The rules of `candidates(host)` whose host and path globs could match one of `paths` (in any case, with or
        without a trailing slash), in the same order: whatever else they leave out could not match. Indexed, the host
        globs of every one returned match `host` (`hosts_matched`)."""
        if not self._indexed:
            return list(self.candidates(host))
        keys = _segment_keys(paths)
        out: list[Candidate] = []
        index = self._paths.get(host)
        if index is not None:
            for parts in keys:
                index.root.walk(parts, out)
        if self._wild:
            wild: list[Candidate] = []
            for parts in keys:
                self._wild_paths.root.walk(parts, wild)
            if wild:
                matching = self._wild_matching(host)
                out += [c for c in wild if c.order in matching]
        if len(out) < 2:
            return out
        by_order = {c.order: c for c in out}   # a rule found twice (several globs, or paths) is one candidate
        return [by_order[order] for order in sorted(by_order)]

    @property
    def hosts_matched(self) -> bool:
        """Whether `path_candidates` gives only rules whose hosts match (so a decision need not match them again)."""
        return self._indexed

    def alternatives(self, host: str, agent: str | None, most: int = 5) -> tuple[str, ...]:
        """The first `most` allow rules this agent may use on this host, summed up for a denial's message; remembered
        per host and agent (a host with thousands of rules would otherwise cost a denial a scan of them all)."""
        key = (host, agent, most)
        found = self._alternatives.get(key)
        if found is None:
            out: list[str] = []
            for c in itertools.chain(self._by_host.get(host, ()), self._wild):
                if c.rule.effect == "allow" and c.policy.applies_to(agent) and (
                        c.rule.agents is None or agent in c.rule.agents) and (
                        c.host_known or not c.rule.hosts or any(h.matches(host) for h in c.rule.hosts)):
                    out.append(c.rule.summary())
                    if len(out) == most:
                        break
            found = tuple(out)
            if len(self._alternatives) >= MOST_CACHED_HOSTS:
                self._alternatives.clear()
            self._alternatives[key] = found
        return found

    def reporting(self, host: str) -> tuple[Candidate, ...]:
        """The candidates on this host from report-mode policies (they soften default deny where they cover it)."""
        found = self._reporting.get(host)
        if found is None:
            found = tuple(c for c in self.candidates(host) if c.policy.mode == "report")
            if len(self._reporting) >= MOST_CACHED_HOSTS:
                self._reporting.clear()
            self._reporting[host] = found
        return found

    def _wild_matching(self, host: str) -> frozenset[int]:
        """The glob-host rules whose hosts match this host (by `order`), remembered per host."""
        found = self._wild_for.get(host)
        if found is None:
            found = frozenset(c.order for c in self._wild if not c.rule.hosts
                              or any(h.matches(host) for h in c.rule.hosts))
            if len(self._wild_for) >= MOST_CACHED_HOSTS:
                self._wild_for.clear()
            self._wild_for[host] = found
        return found

    def routing(self, host: str) -> Routing:
        """How the server at `host` routes paths, as any policy's `servers:` declares. A declaration describes the
        server, so it holds for the rules of every policy; where two differ, the more lenient reading holds."""
        out = EXACT
        for glob, routing in self._servers:
            if glob.matches(host):
                out = out | routing
        return out

    def limit_windows(self) -> dict[str, float | None]:
        """Every limited rule's key and window (SQL rules' too), to seed counters from storage and to keep the rows
        whose hits still count when the log is pruned."""
        return {r.key: r.limit.per for p in self.policies for r in (*p.rules, *p.sql_rules) if r.limit}

    def review_for(self, agent: str | None) -> dict[str, Wait | None]:
        """What the enforced policies for this agent say each undo class does (`review:`): absent, it is not gated;
        None, it passes and is queued for review; else it waits. Where policies differ, the strictest holds."""
        out: dict[str, Wait | None] = {}
        for policy in self.policies:
            if policy.mode != "enforce" or not policy.applies_to(agent):
                continue
            for undo_class, wait in policy.review:
                out[undo_class] = strictest((out.get(undo_class), wait)) if undo_class in out else wait
        return out

    def enforced_limits(self, keys: Iterable[str]) -> tuple[tuple[str, Limit], ...]:
        """The limits of these rules that are caps (in enforced policies, not report-mode ones)."""
        wanted = set(keys)
        return tuple((r.key, r.limit) for p in self.policies if p.mode == "enforce" for r in p.rules
                     if r.limit and r.key in wanted)


class _Verdict:
    """What a list of matched rules says once their conditions are evaluated: the first deny, the allows, the errors."""

    __slots__ = ("deny", "allows", "errors")   # a plain class: made twice per decision, a dataclass costs more

    def __init__(self) -> None:
        self.deny: tuple[Rule, str] | None = None
        self.allows: list[Rule] = []
        self.errors: list[tuple[Rule, str]] = []


def _judge(rules: list[Rule], view: RequestView, context: Callable[[], Any]) -> _Verdict:
    verdict = _Verdict()
    for rule in rules:
        if rule.when is not None:
            try:
                if not rule.when.evaluate(context()):
                    continue
            except CelEvalError as exc:
                verdict.errors.append((rule, str(exc)))
                continue
        if rule.effect == "deny":
            if verdict.deny is None:
                verdict.deny = (rule, rule.reason or f"denied by rule '{rule.name}'")
        else:
            verdict.allows.append(rule)
    if verdict.deny is None and verdict.errors:
        rule, message = verdict.errors[0]
        verdict.deny = (rule, f"rule '{rule.name}' could not be evaluated, so the request is denied: {message}")
    return verdict


def _limit_denial(rules: list[Rule], view: RequestView, counts: LimitCounts, now: float) -> tuple[Rule, str] | None:
    agent = view.agent or ""
    for rule in rules:
        if rule.limit and counts.count(rule.key, agent, rule.limit.per, now) >= rule.limit.count:
            wait = counts.retry_after(rule.key, agent, rule.limit, now)
            when = f"; the next one is allowed in {int(wait) + 1}s" if wait is not None else ""
            return rule, f"limit reached: rule '{rule.name}' allows {rule.limit.describe()} for agent '{agent}'{when}"
    return None


#: The most readings of a request's repeated keys that are decided one by one; past it the request is refused.
MOST_VALUE_READINGS = 256


def decide(view: RequestView, policies: PolicySet, now: float, counts: LimitCounts) -> Decision:
    """Decide one request. Unknown agents and unmatched requests are denied; deny beats allow; limits are caps.

    Two things common servers read differently are decided on every reading (refusals carry `request-reading`):

    - A key the query or a form has twice (`repeated_keys`). Only a rule with `duplicate_keys: accept` may allow such
      a request, and only if every reading of it is allowed: one per combination of the repeated keys' values
      (`value_readings`), each read as if it were the only value. Conditions keep seeing one string per key, so one
      written for a single value stays sound whichever value a server takes (first, last, or each of a list), with
      nothing to rewrite; giving them a list instead would leave every existing `request.query.x` reading one value
      of several. Past MOST_VALUE_READINGS combinations the request is refused.
    - The path as a lenient router reads it: an allowed request must not match an enforced deny rule when paths are
      matched in any case and with or without a trailing slash (Express's default). Where a policy declares how a
      server routes (`servers:`; a rule's `path_case`, `trailing_slash`), rules match that way in the first place.
    """
    if view.agent is None:
        return Decision("deny", "the request carries no known agent identity")
    repeated = repeated_keys(view)
    first = _decide_reading(view, policies, now, counts, repeated)
    if not repeated or first.effect != "allow":
        return first
    return _every_value(view, repeated, first, policies, now, counts)


def _every_value(view: RequestView, repeated: list[RepeatedKey], first: Decision, policies: PolicySet, now: float,
                 counts: LimitCounts) -> Decision:
    """`first`, the decision on each repeated key's first value, if every other reading of their values is allowed
    too; else a refusal naming the reading."""
    count = reading_count(repeated)
    if count > MOST_VALUE_READINGS:
        keys = ", ".join(sorted({repr(key) for _, key, _ in repeated}))
        return Decision("deny", f"keys sent more than once ({keys}) combine into {count} readings of the request, "
                                f"too many to decide one by one (at most {MOST_VALUE_READINGS})",
                        "request-reading", allowed_instead=_alternatives(view, policies))
    for how, reading in value_readings(view):
        d = _decide_reading(reading, policies, now, counts, repeated)
        if d.effect != "allow":
            return Decision("deny", f"refused: servers differ on which value of a repeated key they read; read with "
                                    f"{how}, policy does not allow the request ({d.reason})",
                            "request-reading", allowed_instead=d.allowed_instead)
        first = waiting_as_strictly(first, d)
    return first


class _Matched:
    """The rules whose plain criteria match one reading of a request, sorted by what they may do to it."""

    __slots__ = ("enforce", "report", "reporting", "unaccepting", "lenient_denies", "lenient_waits")

    def __init__(self) -> None:   # a plain class: made for every decision, a dataclass costs more
        self.enforce: list[Rule] = []
        self.report: list[Rule] = []
        self.reporting = False   # a report-mode policy softens default deny only on the hosts its rules cover
        self.unaccepting: list[Rule] = []   # enforced allow rules refusing keys sent twice
        self.lenient_denies: list[Rule] = []  # enforced deny rules a lenient router's path meets
        self.lenient_waits: list[Rule] = []   # enforced allow rules that wait, met the same way


def _match(view: RequestView, policies: PolicySet, repeated: list[RepeatedKey]) -> _Matched:
    """Sort the candidate rules for one reading by their plain criteria, matching paths as the host's server routes."""
    routing = policies.routing(view.host)
    m = _Matched()
    formatless = _without_format(view)
    m.reporting = any(c.policy.applies_to(view.agent) and _covers(c, view) for c in policies.reporting(view.host))
    paths = (view.path,) if formatless is None else (view.path, formatless.path)
    hosts_matched = policies.hosts_matched
    for c in policies.path_candidates(view.host, paths):
        if not c.policy.applies_to(view.agent):
            continue
        enforced, rule, host_known = c.policy.mode == "enforce", c.rule, c.host_known or hosts_matched
        if rule.matches_plain(view, host_known, routing):
            if repeated and rule.effect == "allow" and not rule.accepts_duplicate_keys:
                if enforced:
                    m.unaccepting.append(rule)
            else:
                (m.enforce if enforced else m.report).append(rule)
        elif enforced and (rule.effect == "deny" or rule.wait is not None) and (
                rule.matches_plain(view, host_known, LENIENT) or (
                formatless is not None and rule.matches_plain(formatless, host_known, LENIENT))):
            (m.lenient_denies if rule.effect == "deny" else m.lenient_waits).append(rule)
    return m


#: The formats Rails registers out of the box (and Spring's suffix matching commonly sees); `files.delete` on a
#: Slack-style API is a method name, not a format.
_FORMAT_SUFFIX = re.compile(r"(/[^/]+)\.(?i:json|xml|html?|csv|te?xt|ya?ml|js|atom|rss|ics|pdf|zip)/?$")


def _without_format(view: RequestView) -> RequestView | None:
    """The request with a format suffix taken off its last segment (`/files/a/delete.json`), as Rails' `(.:format)`
    and Spring's suffix matching route it; None when it has none. Only deny rules are matched against it."""
    if "." not in view.path:   # every format suffix has one (most paths have none: the expression is spared)
        return None
    stripped = _FORMAT_SUFFIX.sub(r"\1", view.path)
    return with_changes(view, path=stripped) if stripped != view.path else None


def _decide_reading(view: RequestView, policies: PolicySet, now: float, counts: LimitCounts,
                    repeated: list[RepeatedKey]) -> Decision:
    """Decide one reading of a request: its conditions, limits and report mode, then the path as lenient routers
    read it."""
    m = _match(view, policies, repeated)
    cache: dict[str, Any] = {}

    def context() -> Any:
        """Built once per decision, holding only what the conditions that may run can read."""
        if "c" not in cache:
            rules = m.enforce + m.report + m.lenient_denies + m.lenient_waits
            cache["c"] = bind(view.cel_context(now, [p for r in rules if r.when is not None for p in r.when.paths]),
                              bounded=True)
        return cache["c"]

    d = _conclude(view, policies, m, context, now, counts, repeated)
    if d.effect == "allow" and m.lenient_waits:
        # A router that ignores case, a trailing slash or a format suffix runs what a waiting rule names: it waits.
        waits = _judge(m.lenient_waits, view, context).allows
        if waits:
            d = dataclasses.replace(d, wait=strictest([d.wait, *(r.wait for r in waits)]))
    if d.effect == "allow" and m.lenient_denies:
        lenient = _judge(m.lenient_denies, view, context)
        if lenient.deny is not None:
            return Decision("deny", f"refused: read by a router that ignores case, a trailing slash (as Express does "
                                    f"by default) or a format suffix (as Rails does), the request {view.method} "
                                    f"{view.path} is one policy denies "
                                    f"({lenient.deny[1]})", "request-reading",
                            allowed_instead=_alternatives(view, policies))
    return d


def _conclude(view: RequestView, policies: PolicySet, m: _Matched, context: Callable[[], Any], now: float,
              counts: LimitCounts, repeated: list[RepeatedKey]) -> Decision:
    """The decision the matched rules make: deny beats allow, limits cap, report mode softens default deny."""
    hard = _judge(m.enforce, view, context)
    soft = _judge(m.report, view, context)
    if hard.deny is None:
        limited = _limit_denial(hard.allows, view, counts, now)
        if limited:
            hard.deny = limited
    if hard.deny is not None:
        rule, reason = hard.deny
        return Decision("deny", reason, rule.key, allowed_instead=_alternatives(view, policies))
    if soft.deny is None:
        soft.deny = _limit_denial(soft.allows, view, counts, now)
    would = f"report mode: {soft.deny[1]} (rule {soft.deny[0].key})" if soft.deny else None
    allows = hard.allows + (soft.allows if soft.deny is None else [])
    limited_keys = tuple([r.key for r in hard.allows + soft.allows if r.limit])
    if hard.allows:
        first = hard.allows[0]
        return Decision("allow", f"allowed by rule '{first.name}'", first.key, would, limited_keys,
                        rewrite=first.rewrite, wait=strictest([r.wait for r in hard.allows]))
    if allows:
        first = allows[0]
        would = f"report mode: only report-mode rule '{first.name}' allows this; enforced, it would be denied"
        return Decision("allow", f"allowed by report-mode rule '{first.name}'", first.key, would, limited_keys,
                        rewrite=first.rewrite)
    if m.unaccepting:
        where, key, _ = repeated[0]
        return Decision("deny", f"the {where} has the key {key!r} more than once, and servers differ on which value "
                                f"they read; rule '{m.unaccepting[0].name}' does not accept repeated keys",
                        "request-reading", allowed_instead=_alternatives(view, policies))
    nothing = f"no rule allows {view.describe()} for agent '{view.agent}'"
    if m.reporting:
        return Decision("allow", nothing + " (allowed: a policy for this agent is in report mode)", None,
                        would or f"report mode: {nothing}", limited_keys)
    return Decision("deny", nothing, None, allowed_instead=_alternatives(view, policies))


def _covers(c: Candidate, view: RequestView) -> bool:
    """Whether a candidate rule names this request's host and agent (its method and path may differ)."""
    rule = c.rule
    if rule.agents is not None and view.agent not in rule.agents:
        return False
    return c.host_known or not rule.hosts or any(h.matches(view.host) for h in rule.hosts)


def _alternatives(view: RequestView, policies: PolicySet, most: int = 5) -> tuple[str, ...]:
    """What this agent may do on this host instead, for the denial body."""
    return policies.alternatives(view.host, view.agent, most)
