"""The undo planner, pure: from an audit row and the undo rules, the compensating requests (or why there are none)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urljoin, urlsplit

from ..bodyparse import form_pairs, json_loads
from ..globs import Glob, HostIndex
from ..hostkey import host_key
from ..policy.cel import CelEvalError, Condition, Expression, bind

#: Names undo expressions may read: the agent's request and its response, the pre-image, and a guard's read.
UNDO_VARIABLES = frozenset({"request", "response", "pre", "read"})
Fidelity = Literal["exact", "needs-preimage", "lossy", "irreversible"]
FIDELITIES: tuple[str, ...] = ("exact", "needs-preimage", "lossy", "irreversible")
#: Methods that change nothing: no pre-image, no undo class, nothing for a session undo to take back.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
#: The methods a rule's reads (a guard's, a pre-image's) may use: sent before undo or the agent's request, they must
#: change nothing. So a request sent as an undo with another method is one of its compensating steps.
READ_METHODS = ("GET", "HEAD")
#: The fields of a body as undo expressions read it: the bytes, and what is decoded (`text`) or parsed from them.
BODY_FIELDS = frozenset({"body", "text", "json", "form"})
#: Answers that say a read was not allowed (no or a refused credential), not what the resource is like.
REFUSED_STATUSES = frozenset({401, 403, 407})


def read_refused(status: int | None) -> bool:
    """Whether a read's status says it was refused (auth), not how the resource is."""
    return status in REFUSED_STATUSES


def read_failed(status: int | None) -> bool:
    """Whether a read's status says it failed (not made, refused, the upstream failing or throttling): what it
    shows is not the resource."""
    return status is None or status == 0 or read_refused(status) or status == 429 or status >= 500


class Scope(dict[str, Any]):
    """An exchange's variables (a dict, as Python reads them), handed to the CEL engine once per set of fields read:
    binding converts every value it is given, after which each evaluation costs about a microsecond instead of a
    hundred (a plan evaluates dozens). Only the fields an expression reads are bound (`pruned`): a 10 MB body is
    not converted for a condition that reads the host."""

    _bound: Any = None
    _by_paths: dict[tuple[tuple[str, ...], ...], Any] | None = None

    def bound(self, paths: Iterable[tuple[str, ...]] | None = None) -> Any:
        """The engine's context of every variable, or of only the fields on `paths` (kept per set of fields)."""
        if paths is None:
            if self._bound is None:
                self._bound = bind(self)
            return self._bound
        key = tuple(sorted({path[:2] for path in paths}))  # what `pruned` keeps depends on these
        if self._by_paths is None:
            self._by_paths = {}
        context = self._by_paths.get(key)
        if context is None:
            context = self._by_paths[key] = bind(pruned(self, key))
        return context


def engine_view(variables: dict[str, Any], paths: Iterable[tuple[str, ...]] | None = None) -> Any:
    """What to hand an evaluation reading `paths` (None: unknown, all of them): a Scope's bound context of those
    fields, else the dict itself."""
    return variables.bound(paths) if isinstance(variables, Scope) else variables


@dataclass(frozen=True)
class Template:
    """A string with `${CEL}` parts; a string that is one `${...}` gives that expression's value unconverted."""

    source: str
    parts: tuple[str | Expression, ...]

    def render(self, variables: dict[str, Any]) -> Any:
        if len(self.parts) == 1 and isinstance(self.parts[0], Expression):
            return self.parts[0].evaluate(engine_view(variables, self.parts[0].paths))
        out = []
        for part in self.parts:
            value = part.evaluate(engine_view(variables, part.paths)) if isinstance(part, Expression) else part
            out.append(value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list)
                       else str(value).lower() if isinstance(value, bool) else str(value))
        return "".join(out)


def render_tree(value: Any, variables: dict[str, Any]) -> Any:
    """Render templates inside a JSON-like structure (for `json:` bodies)."""
    if isinstance(value, Template):
        return value.render(variables)
    if isinstance(value, dict):
        return {k: render_tree(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [render_tree(v, variables) for v in value]
    return value


@dataclass(frozen=True)
class RequestTemplate:
    """One compensating (or guard) request: method, URL, headers and body, each templated."""

    method: str
    url: Template
    headers: tuple[tuple[str, Template], ...] = ()
    json: Any = None           # a structure of templates, sent as JSON
    form: Any = None           # a map of templates (nested maps and lists too), or one template giving a map: a form
    body: Template | None = None   # raw bytes (e.g. `${pre.body}`), sent as they are
    success: Condition | None = None
    why: str = ""
    conflict: Condition | None = None   # the answer of a conditional request refused as stale (default: a 412)
    repeatable: bool | None = None  # safe to send again if an interrupted undo cannot tell whether it arrived;
                                    # by default only PUT and DELETE are (HTTP's idempotent methods)


@dataclass(frozen=True)
class Guard:
    """A read before compensating, and what it must show; otherwise someone changed the resource after the agent.
    A read answered 401, 403 or 407 (or as `refused` says, for APIs that answer 200 to everything) was refused: that
    says nothing about the resource, and is never reported as a conflict."""

    read: RequestTemplate
    expect: Condition
    conflict: str = "the resource changed after the agent's request"
    refused: Condition | None = None
    changes_with: tuple[str, ...] = ()  # JSON fields (dotted) the server changes on every edit: a version


@dataclass(frozen=True)
class UndoRule:
    """How to take back one kind of request: match, when it took effect, fidelity, and the compensating requests."""

    pack: str
    name: str
    hosts: tuple[Glob, ...]
    methods: frozenset[str] | None
    paths: tuple[Glob, ...] | None
    fidelity: Fidelity
    when: Condition | None = None
    effective: Condition | None = None
    reason: str = ""           # for irreversible rules: why (shown in `log` and `show`)
    undo: tuple[RequestTemplate, ...] = ()
    guard: Guard | None = None
    preimage: RequestTemplate | None = None  # read before forwarding, templated from the request only
    twin: RequestTemplate | None = None      # a reversible request with the same purpose, sent instead where a
                                             # policy rule says `rewrite: reversible` (Gmail delete -> trash)
    guard_unneeded: str = ""   # why no later change can be lost by this undo, where the rule needs no guard

    def matches(self, method: str, host: str, path: str) -> bool:
        return (any(h.matches(host) for h in self.hosts) and (self.methods is None or method in self.methods)
                and (self.paths is None or any(p.matches(path) for p in self.paths)))

    @functools.cached_property
    def request_body_fields(self) -> frozenset[str]:
        """The fields of the request's body (`BODY_FIELDS`) its expressions may read (all, if one's paths are not
        known)."""
        out: set[str] = set()
        for expression in _expressions(self):
            paths = expression.paths
            if paths is None:
                return BODY_FIELDS
            for path in paths:
                if path[0] == "request":
                    if len(path) == 1:
                        return BODY_FIELDS
                    if path[1] in BODY_FIELDS:
                        out.add(path[1])
        return frozenset(out)

    @property
    def label(self) -> str:
        return f"irreversible: {self.reason}" if self.fidelity == "irreversible" and self.reason else self.fidelity


def expressions(part: Any) -> Iterator[Expression | Condition]:
    """Every expression inside a rule part (templates, conditions, requests, nested bodies)."""
    if isinstance(part, Expression | Condition):
        yield part
    elif isinstance(part, Template):
        yield from (p for p in part.parts if isinstance(p, Expression))
    elif isinstance(part, RequestTemplate):
        for f in fields(part):
            yield from expressions(getattr(part, f.name))
    elif isinstance(part, dict):
        for v in part.values():
            yield from expressions(v)
    elif isinstance(part, list | tuple):
        for v in part:
            yield from expressions(v)



def _expressions(rule: UndoRule) -> Iterator[Condition | Expression]:
    """Every condition and expression of a rule: its match, its templates (compensations, guard, pre-image, twin)."""
    yield from (c for c in (rule.when, rule.effective) if c is not None)
    if rule.guard is not None:
        yield from (c for c in (rule.guard.expect, rule.guard.refused) if c is not None)
    for template in (*rule.undo, *(t for t in (rule.guard and rule.guard.read, rule.preimage, rule.twin) if t)):
        yield from expressions(template)  # its success and conflict, and the templates of its URL, headers and body


@dataclass(frozen=True)
class Exchange:
    """One request and its response as the planner sees them (from an audit row, or from a live flow)."""

    method: str
    url: str
    request_headers: tuple[tuple[str, str], ...] = ()
    request_body: bytes | None = None
    status: int | None = None
    response_headers: tuple[tuple[str, str], ...] = ()
    response_body: bytes | None = None
    pre_status: int | None = None              # the pre-image read before forwarding, if one was made
    pre_headers: tuple[tuple[str, str], ...] = ()
    pre_body: bytes | None = None
    pre_body_size: int | None = None           # its whole size; more than len(pre_body) when it was cut
    credential: str | None = None              # the credential injected into the request, if one was

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Exchange:
        def pairs(text: Any) -> tuple[tuple[str, str], ...]:
            return tuple((str(k), str(v)) for k, v in json.loads(text)) if text else ()

        return cls(str(row["method"]), str(row["url"]), pairs(row.get("req_headers")), row.get("req_body"),
                   row.get("status"), pairs(row.get("resp_headers")), row.get("resp_body"),
                   row.get("pre_status"), pairs(row.get("pre_headers")), row.get("pre_body"), row.get("pre_body_size"),
                   row.get("credential"))

    def target(self) -> tuple[str, str, str]:
        """Method, host and path, as rules match them."""
        parts = urlsplit(self.url)
        return self.method.upper(), host_key(parts.hostname or ""), parts.path or "/"

    def variables(self, request_fields: frozenset[str] = BODY_FIELDS) -> Scope:
        """`request` and `response` as undo expressions read them (of the request's body, `request_fields`)."""
        request = self.request_variables(request_fields)
        response = {"status": self.status if self.status is not None else 0,
                    **message_view(self.response_headers, self.response_body)}
        pre = ({"status": self.pre_status, **message_view(self.pre_headers, self.pre_body)}
               if self.pre_status is not None else {})
        return Scope({"request": request, "response": response, "pre": pre, "read": {}})

    def request_variables(self, fields: frozenset[str] = BODY_FIELDS) -> dict[str, Any]:
        """`request` as undo expressions read it (of its body, at least `fields`), built once per Exchange (and kept
        by `answered`) unless more fields are asked for later; never changed."""
        kept: tuple[frozenset[str], dict[str, Any]] | None = self.__dict__.get("_request_variables")
        if kept is not None and fields <= kept[0]:
            return kept[1]
        parts = urlsplit(self.url)
        host = (parts.hostname or "").lower()
        request = {"method": self.method.upper(), "url": self.url, "scheme": parts.scheme, "host": host,
                   "port": parts.port or (443 if parts.scheme == "https" else 80), "path": parts.path or "/",
                   "base_url": f"{parts.scheme}://{parts.netloc}{parts.path or '/'}",
                   "parent_url": f"{parts.scheme}://{parts.netloc}{(parts.path or '/').rstrip('/').rpartition('/')[0]}",
                   "segments": [unquote(seg) for seg in (parts.path or "/").split("/")[1:]],
                   "query": dict(parse_qsl(parts.query, keep_blank_values=True)),
                   **message_view(self.request_headers, self.request_body, fields)}
        self.__dict__["_request_variables"] = (fields, request)
        return request

    def same_request(self, other: Exchange) -> bool:
        """Whether `other` is the same request (method, URL, headers, body), whatever its response."""
        return ((self.method, self.url, self.request_headers, self.request_body)
                == (other.method, other.url, other.request_headers, other.request_body))

    def answered(self, later: Exchange) -> Exchange:
        """`later` (the same request, with its response and pre-image) keeping the request's variables this exchange
        has built: a request is read once, before it is sent and after its answer."""
        if not self.same_request(later):
            return later
        kept = self.__dict__.get("_request_variables")
        if kept is not None:
            later.__dict__["_request_variables"] = kept
        return later


def header_map(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in pairs:
        out[k.lower()] = f"{out[k.lower()]}, {v}" if k.lower() in out else v
    return out


def message_view(headers: Iterable[tuple[str, str]], body: bytes | None,
                 fields: frozenset[str] = BODY_FIELDS) -> dict[str, Any]:
    """A request's or response's headers (lower-case names), `content_type` (its media type, lower-case, without
    parameters; "" if none) and body as undo expressions read them (of the body, `fields`: see `body_view`)."""
    mapped = header_map(headers)
    content_type = mapped.get("content-type", "").split(";")[0].strip().lower()
    return {"headers": mapped, "content_type": content_type, **body_view(body, fields)}


def body_view(raw: bytes | None, fields: frozenset[str] = BODY_FIELDS) -> dict[str, Any]:
    """A body as undo expressions read it: `body` (bytes), `text`, and `json` or `form` when it parses as one; of
    these, only `fields` (what the rules that may match read: a body no rule reads is neither decoded nor parsed)."""
    out: dict[str, Any] = {"body": raw or b""}
    if fields <= {"body"}:
        return out
    text = (raw or b"").decode("utf-8", "replace")
    if "text" in fields:
        out["text"] = text
    if not fields & {"json", "form"}:
        return out
    try:
        parsed = json_loads(text) if text else None
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python's parser goes
        parsed = None
    if "json" in fields:
        out["json"] = parsed if parsed is not None else {}
    if "form" in fields:
        out["form"] = dict(form_pairs(text)) if parsed is None and "=" in text else {}
    return out


def request_body_fields(rules: Iterable[UndoRule]) -> frozenset[str]:
    """The fields of the request's body (`BODY_FIELDS`) that any of these rules' expressions may read."""
    out: frozenset[str] = frozenset()
    for rule in rules:
        out |= rule.request_body_fields
        if out == BODY_FIELDS:
            break
    return out


@dataclass(frozen=True)
class Step:
    """A compensating request, rendered: ready to send through the pipeline."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    why: str
    success: Condition | None = None
    repeatable: bool = False
    conflict: Condition | None = None

    def describe(self) -> str:
        return f"{self.method} {self.url}"


@dataclass(frozen=True)
class Plan:
    """What `undo` would do for one request: the steps, or why there are none (`verdict` says which)."""

    request_id: str
    verdict: Literal["plan", "no rule", "not effective", "irreversible", "not planned"]
    rule: str | None = None
    fidelity: str = "no rule"
    reason: str = ""
    steps: tuple[Step, ...] = ()
    guard: Step | None = None
    guard_expect: Condition | None = None
    conflict: str = ""
    variables: dict[str, Any] = field(default_factory=dict, repr=False)
    guard_refused: Condition | None = None
    credential: str | None = None  # the credential the agent's request was sent with: undo needs it too
    unguarded: str = ""   # why nothing can tell a later change from the agent's version ("": something can)


def preimage_read(rules: Iterable[UndoRule], exchange: Exchange) -> Step | None:
    """The read to make before forwarding this request, or None."""
    return _before_forwarding(rules, exchange, lambda rule: rule.preimage)


def twin_for(rules: Iterable[UndoRule], exchange: Exchange) -> Step | None:
    """The reversible twin to forward instead of this request, or None if its rule has none."""
    return _before_forwarding(rules, exchange, lambda rule: rule.twin)


def _before_forwarding(rules: Iterable[UndoRule], exchange: Exchange,
                       part: Callable[[UndoRule], RequestTemplate | None]) -> Step | None:
    """A rule's request made before forwarding (`part` picks which), rendered from the request alone. Rules are
    tried in order as `find_rule` will try them once the response is in: one whose `when` is already false is
    passed over; one whose `when` already holds decides; one whose `when` needs the response or the pre-image
    decides if it has that part, else is passed over."""
    target = exchange.target()
    variables: dict[str, Any] | None = None
    candidates = tuple(rules_for(rules, target[1], target[0]))
    for rule in candidates:
        if not rule.matches(*target):
            continue
        if variables is None:
            variables = Scope({**exchange.variables(request_body_fields(candidates)), "response": {}, "pre": {}})
            # (the response and the pre-image are not known yet: reading them fails)
        try:
            holds: bool | None = (rule.when.evaluate(engine_view(variables, rule.when.paths)) if rule.when is not None
                                  else True)
        except CelEvalError:
            holds = None
        template = part(rule)
        if holds is False or (holds is None and template is None):
            continue
        if template is None:
            return None
        try:
            return _render(template, variables)
        except CelEvalError:
            return None
    return None


def find_rule(rules: Iterable[UndoRule], exchange: Exchange, variables: Scope | None = None
              ) -> tuple[UndoRule, Scope] | None:
    """The first rule matching the request (and its `when`), in pack order, with the exchange's variables; those
    are built (bodies parsed) only once a rule matches host, method and path. A rule that reads a pre-image matches
    when its `when` cannot be told for want of a pre-image that could not be read."""
    target = exchange.target()
    candidates = tuple(rules_for(rules, target[1], target[0]))
    for rule in candidates:
        if not rule.matches(*target):
            continue
        if variables is None:  # of the request's body, only what the rules that may match read
            variables = exchange.variables(request_body_fields(candidates))
        missing_pre = rule.preimage is not None and not _usable(variables["pre"])
        if rule.when is not None:
            try:
                if not rule.when.evaluate(pruned({**variables, "pre": {}}, rule.when.paths) if missing_pre
                                          else engine_view(variables, rule.when.paths)):
                    continue
            except CelEvalError:
                if not missing_pre:
                    continue
                # It could not be told without the pre-image: the rule stands, and plan() says what is missing.
        return rule, variables
    return None


#: Undo classes from what undo takes back best to what it cannot take back at all.
FIDELITY_ORDER: tuple[Fidelity, ...] = ("exact", "needs-preimage", "lossy", "irreversible")


def expected_class(rules: Iterable[UndoRule], exchange: Exchange) -> tuple[Fidelity, UndoRule | None]:
    """The undo class a request will have, told before it is sent (for `review:`), and the rule that gives it.

    Rules are tried as `find_rule` will try them once the response is in; where a rule's `when` reads the response,
    the request may end up under it or a later one, and the worse class of the two is taken (such a `when` is not
    evaluated: before the response it could only be false or unknown, and counting it can only make the class
    worse, never better). A request no rule is sure to match (none does, or each that may needs the response)
    cannot be counted on to be undone: irreversible, with no rule. Called for every mutating request under a
    `review:`, so it looks only at the rules for the request's host and hands each condition only what it reads."""
    method, host, path = exchange.target()
    variables: dict[str, Any] | None = None
    worst: tuple[int, UndoRule] | None = None
    candidates = tuple(rules_for(rules, host, method))
    for rule in candidates:
        if not rule.matches(method, host, path):
            continue
        holds: bool | None = True
        if rule.when is not None and any(p[0] == "response" for p in rule.when.paths):
            holds = None
        elif rule.when is not None:
            if variables is None:
                variables = exchange.variables(request_body_fields(candidates))
            try:
                holds = rule.when.evaluate(pruned(variables, rule.when.paths))
            except CelEvalError:
                holds = None
        if holds is False:
            continue
        rank = FIDELITY_ORDER.index(rule.fidelity)
        if worst is None or rank > worst[0]:
            worst = (rank, rule)
        if holds:
            return FIDELITY_ORDER[worst[0]], worst[1]
    return "irreversible", None  # perhaps no rule will match: nothing is sure to take it back


def pruned(variables: dict[str, Any], paths: Iterable[tuple[str, ...]]) -> dict[str, Any]:
    """Only the parts of the variables these paths read (each root's first-level keys), so that the engine converts
    a few values instead of a whole request."""
    out: dict[str, Any] = {}
    whole: set[str] = set()
    for path in paths:
        root = path[0]
        if root not in variables or root in whole:
            continue
        value = variables[root]
        if len(path) == 1 or not isinstance(value, dict):
            out[root] = value
            whole.add(root)
        elif path[1] in value:
            out.setdefault(root, {})[path[1]] = value[path[1]]
        else:
            out.setdefault(root, {})
    return out


class RuleIndex:
    """A pack list's rules by literal host, the others (globs) kept apart; each (host, method)'s candidates in pack
    order: the rules whose hosts may match the host and whose methods (if they name any) include the method."""

    def __init__(self, rules: tuple[UndoRule, ...]) -> None:
        self.rules = rules
        self._hosts = HostIndex(rule.hosts for rule in rules)
        self._by_target: dict[tuple[str, str | None], tuple[UndoRule, ...]] = {}

    def candidates(self, host: str, method: str | None = None) -> tuple[UndoRule, ...]:
        """The rules that may match `host` and `method` (None: any method), in pack order."""
        found = self._by_target.get((host, method))
        if found is None:
            found = tuple(rule for i in self._hosts.positions(host) if _takes(rule := self.rules[i], method))
            if len(self._by_target) < MOST_INDEXED_TARGETS:
                self._by_target[host, method] = found
        return found


def _takes(rule: UndoRule, method: str | None) -> bool:
    return method is None or rule.methods is None or method in rule.methods


#: How many (host, method) candidate lists an index keeps (a proxy sees few hosts; a flood of names must not grow
#: it: past this, lists are made and not kept).
MOST_INDEXED_TARGETS = 4096
_INDEXES: dict[int, RuleIndex] = {}


def rules_for(rules: Iterable[UndoRule], host: str, method: str | None = None) -> Iterable[UndoRule]:
    """The rules that may match a host (and a method, upper-case, if given), in order: from an index kept per rule
    tuple (the loaded packs), else all of them."""
    if not isinstance(rules, tuple):
        return rules
    index = _INDEXES.get(id(rules))
    if index is None or index.rules is not rules:
        if len(_INDEXES) >= 8:  # packs reloaded: the old tuples are gone
            _INDEXES.clear()
        index = _INDEXES[id(rules)] = RuleIndex(rules)
    return index.candidates(host, method)


def classify(rules: Iterable[UndoRule], exchange: Exchange) -> str:
    """The undo class shown with an audit row: the matching rule's fidelity ("unguarded" if nothing would stop its
    undo from destroying a later change), or "no rule"."""
    found = find_rule(rules, exchange)
    if found is None:
        return "no rule"
    rule, variables = found
    if rule.effective is not None and exchange.status is not None:
        try:
            if not rule.effective.evaluate(engine_view(variables, rule.effective.paths)):
                return "not effective"
        except CelEvalError:
            return "not effective"
    if exchange.status is not None and rule.fidelity != "irreversible":
        planned = plan_rule("", exchange, rule, variables)
        if planned.verdict == "plan" and planned.unguarded:
            return UNGUARDED
    return rule.label


def _render(template: RequestTemplate, variables: dict[str, Any]) -> Step:
    url = template.url.render(variables)
    headers = tuple((k, str(value)) for k, v in template.headers if (value := v.render(variables)) is not None)
    body = None
    if template.json is not None:
        try:
            body = json.dumps(render_tree(template.json, variables)).encode()
        except (TypeError, ValueError) as exc:  # a value JSON has no form for (bytes): a plan's reason, not a crash
            raise CelEvalError(f"its JSON body cannot be made: {exc}") from None
        headers += (("Content-Type", "application/json"),)
    elif template.form is not None:
        from .forms import FormError, encode_form

        try:
            body = encode_form(render_tree(template.form, variables))
        except FormError as exc:
            raise CelEvalError(f"its form body cannot be sent: {exc}") from None
        headers += (("Content-Type", "application/x-www-form-urlencoded"),)
    elif template.body is not None:
        raw = template.body.render(variables)
        body = raw if isinstance(raw, bytes) else str(raw).encode()
    repeatable = template.repeatable if template.repeatable is not None else template.method in ("PUT", "DELETE")
    return Step(template.method, str(url), headers, body, template.why, template.success, repeatable,
                template.conflict)


def on_origin(url: str, original: str) -> str | None:
    """`url` made absolute against `original`, if it is on the same origin (scheme, host, port), else None: a
    compensation, pre-image read or twin built from an upstream's answer must not carry a credential elsewhere. A
    URL the parser refuses (`http://[x`, which an upstream may name as a created resource's Location) is on no
    origin: it raised ValueError, which ended the undo class of the row, its outcome with it, and undo planning."""
    try:
        return _on_origin_of(url, original)
    except ValueError:
        return None


def _on_origin_of(url: str, original: str) -> str | None:
    def origin(u: str) -> tuple[str, str, int | None]:
        parts = urlsplit(u)
        try:
            port = parts.port or {"https": 443, "http": 80}.get(parts.scheme.lower())
        except ValueError:
            port = None
        return parts.scheme.lower(), host_key(parts.hostname or ""), port

    absolute = urljoin(original, url)
    if "@" in urlsplit(absolute).netloc:  # user:password@ from an answer: a client would send it as Basic auth
        return None
    return absolute if url and origin(absolute) == origin(original) and origin(original)[2] is not None else None


def _on_origin(step: Step, original: str) -> Step:
    url = on_origin(step.url, original)
    if url is None:
        raise OffOrigin(f"{step.describe()} is not on the origin of the request it undoes ({original})")
    return replace(step, url=url)


class OffOrigin(ValueError):
    """A rendered request would leave the origin of the request it belongs to."""


def _usable(pre: dict[str, Any]) -> bool:
    """A pre-image was read and shows the resource: not a read that failed (status 0), was refused (401, 403, 407)
    or that the upstream failed to answer (429, 5xx)."""
    return bool(pre) and not read_failed(pre.get("status"))


def _preimage_failure(pre: dict[str, Any]) -> str:
    """Why the pre-image cannot be used, for a plan's reason."""
    if not pre:
        return "none was recorded for it"
    status, text = pre.get("status"), " ".join(str(pre.get("text", "")).split())[:200]
    if not status:
        return f"reading it failed: {text}"
    what = "was refused" if read_refused(status) else "failed"
    return f"reading it {what} ({status}{': ' + text if text else ''})"


def _truncated(exchange: Exchange) -> bool:
    """True when only part of the pre-image was kept (its size, or its Content-Length, says there was more)."""
    kept = len(exchange.pre_body or b"")
    length = header_map(exchange.pre_headers).get("content-length", "")
    return (exchange.pre_body_size or 0) > kept or (length.isdigit() and int(length) > kept)


#: How the audit writer stores a lone surrogate (a byte of the request target that was not UTF-8, as mitmproxy reads
#: it): as its JSON escape, text that an agent could have sent as it is.
_STORED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")

#: Why a row whose URL holds that text gets no compensation, planned or proposed.
UNSURE_URL = ("its URL held a byte that is not UTF-8, which the audit log keeps as the text \\udcXX: a compensation "
              "would be sent to the URL that text names, not the one the request reached")


def unsure_url(url: str) -> bool:
    """Whether a recorded URL may not be the one its request reached (it holds a stored surrogate's text)."""
    return _STORED_SURROGATE.search(url) is not None


def plan(request_id: str, exchange: Exchange, rules: Iterable[UndoRule]) -> Plan:
    """The compensating requests for one recorded exchange, rendered from its rule."""
    if unsure_url(exchange.url):  # the URL it reached cannot be told from the one the row reads
        return Plan(request_id, "not planned", reason=UNSURE_URL)
    found = find_rule(rules, exchange)
    if found is None:
        return Plan(request_id, "no rule", reason="no undo rule matches this request")
    return plan_rule(request_id, exchange, *found)


def plan_rule(request_id: str, exchange: Exchange, rule: UndoRule, variables: Scope) -> Plan:
    """The compensating requests of `rule`, which `find_rule` found for the exchange with these variables."""
    base = Plan(request_id, "not planned", f"{rule.pack}/{rule.name}", rule.label, variables=variables,
                credential=exchange.credential)
    if exchange.status is None:
        return replace(base, verdict="not planned",
                    reason="the request has no recorded outcome (it may or may not have happened)")
    try:
        effective = (rule.effective.evaluate(engine_view(variables, rule.effective.paths)) if rule.effective is not None
                     else True)
    except CelEvalError as exc:
        return replace(base, verdict="not planned", reason=f"cannot tell whether it took effect: {exc}")
    if not effective:
        return replace(base, verdict="not effective", reason="the request did not take effect; nothing to undo")
    if rule.fidelity == "irreversible" or not rule.undo:
        return replace(base, verdict="irreversible", reason=rule.reason or "no compensating request exists")
    if (rule.fidelity == "needs-preimage" or rule.preimage is not None) and not _usable(variables["pre"]):
        return replace(base, verdict="not planned", reason="undoing it needs the resource as it was before the "
                       "request (a pre-image), and " + _preimage_failure(variables["pre"]))
    if (rule.fidelity == "needs-preimage" or rule.preimage is not None) and _truncated(exchange):
        return replace(base, verdict="not planned", reason="the pre-image was larger than audit.max_body_bytes, so "
                                                           "only part of it was recorded")
    try:
        steps = tuple(_on_origin(_render(t, variables), exchange.url) for t in rule.undo)
        guard = _on_origin(_render(rule.guard.read, variables), exchange.url) if rule.guard else None
    except CelEvalError as exc:
        return replace(base, verdict="not planned", reason=f"the rule cannot be applied to this response: {exc}")
    except OffOrigin as exc:
        return replace(base, verdict="not planned", reason=f"refused to plan a compensation off the original "
                                                           f"origin: {exc}")
    unguarded = unguarded_because(rule, variables, steps)
    return replace(base, verdict="plan", steps=steps, guard=guard,
                guard_expect=rule.guard.expect if rule.guard else None,
                conflict=rule.guard.conflict if rule.guard else "",
                guard_refused=rule.guard.refused if rule.guard else None,
                unguarded=unguarded, fidelity=UNGUARDED if unguarded else base.fidelity)


#: The class of a row whose undo nothing guards: it would overwrite or delete whatever is there by then.
UNGUARDED = "unguarded"
#: Headers that make a step conditional: the upstream itself refuses it if the resource changed (412).
CONDITIONAL = frozenset({"if-match", "if-unmodified-since", "if-none-match"})
#: Response headers that name a resource's state (a probe read gives them values no real state has).
_STATE_HEADER = re.compile(r"etag|last-modified|version|md5|sha|digest|hash|content-length|x-goog-generation",
                           re.IGNORECASE)
_PROBE = "goex-probe-3f1c9a7e5b2d"


def is_condition(name: str, value: str) -> bool:
    """Whether a step's header makes the upstream refuse it if the resource is not as the agent left it (for a server
    that honours it): `If-Match: ETAG` and `If-Unmodified-Since`, and `If-None-Match: *` (nothing may be there). `If-Match:
    *` asks only that something be there, and `If-None-Match: ETAG` that it changed: neither is one."""
    name, value = name.lower(), value.strip()
    if name == "if-none-match":  # with an ETag it asks that the resource HAS changed: the opposite of a guard
        return value == "*"
    return name in CONDITIONAL and bool(value) and value != "*"


def unguarded_because(rule: UndoRule, variables: dict[str, Any], steps: Iterable[Step]) -> str:
    """Why nothing would stop this undo from destroying a change made after the agent's ("" if something would): the
    rule says no later change can be lost, a step is a conditional request, or the guard's `expect` fails on a read
    showing the resource changed. A guard that holds for any body (`read.json == response.json` where neither is
    JSON: `{} == {}`) guards nothing."""
    if rule.guard_unneeded:
        return ""
    if any(is_condition(k, v) for step in steps for k, v in step.headers):
        return ""
    if rule.guard is None:
        return "the rule has no guard: nothing checks that the resource is still as the agent left it"
    paths = rule.guard.expect.paths
    context = bind(pruned({k: v for k, v in variables.items() if k != "read"}, paths))  # only what `expect` reads
    for probe in changed_reads(variables, rule.guard.changes_with, restores_whole(steps, variables)):
        context.update(pruned({"read": probe}, paths))  # each probe in turn
        try:
            if rule.guard.expect.evaluate(context):
                return (f"its guard `{rule.guard.expect.source}` also holds for a resource someone changed after "
                        f"the agent (a read answering 200 with {probe['content_type'] or 'a'} body no one wrote), "
                        "so it cannot tell a later edit from the agent's version")
        except CelEvalError:
            continue  # the expectation cannot even be read on such a resource: it would not hold
    return ""


def restores_whole(steps: Iterable[Step], variables: dict[str, Any]) -> bool:
    """Whether a step writes the pre-image back whole (its bytes, or its JSON): then every field of the resource is
    overwritten, and a change to any of them is one undo would destroy."""
    pre = variables.get("pre") or {}
    for step in steps:
        if not step.body or not pre:
            continue
        if step.body == pre.get("body"):
            return True
        try:
            if pre.get("json") and json.loads(step.body) == pre["json"]:
                return True
        except (ValueError, RecursionError):
            continue
    return False


def changed_reads(variables: dict[str, Any], changes_with: tuple[str, ...] = (),
                  whole: bool = False) -> list[dict[str, Any]]:
    """Reads of the resource as if someone had changed it after the agent: the response's headers with every header
    naming a state replaced, and a body no one wrote, as text and as JSON; and, where the agent's answer (else the
    pre-image) is a JSON object, that object with one field changed at a time, each time with every field that names
    a version changed too (an `etag`, `sha`, `updated_at`…, and those the guard's `changes_with` names) where undo
    writes the pre-image back `whole`; otherwise (a delete, a partial write) that object with every field changed
    but those that name it (`id`, `number`, `…_id`): a guard comparing only those guards nothing."""
    response = variables.get("response") or {}
    headers = {k: (f'"{_PROBE}"' if k == "etag" else "Fri, 01 Jan 2100 00:00:00 GMT" if k == "last-modified"
                   else _PROBE if _STATE_HEADER.search(k) else v) for k, v in response.get("headers", {}).items()
               if k != "content-type"}
    bodies = [(response.get("content_type") or "text/plain", _PROBE.encode()),
              ("application/json", json.dumps({"goex_probe": _PROBE}).encode())]
    named = {tuple(path.split(".")) for path in changes_with}
    answer = response.get("json")
    if whole:
        shape = answer or (variables.get("pre") or {}).get("json")
        docs = _one_field_changed(shape, named) if isinstance(shape, dict) else []
    else:  # the resource as the agent's answer left it
        shape = answer
        docs = [_all_but_identity_changed(answer, named)] if isinstance(answer, dict) and answer else []
    bodies += [("application/json", json.dumps(doc).encode()) for doc in docs if doc != shape]
    return [{"status": 200, **message_view([*headers.items(), ("content-type", content_type)], body)}
            for content_type, body in bodies]


#: JSON fields that name a version of the resource: a real edit changes them along with what it edits.
_VERSION_KEY = re.compile(r"^_?rev$|etag|version|revision|generation|updated|modified|sha|hash|digest|timestamp|_at$",
                          re.IGNORECASE)
#: At most this many fields are changed one at a time (a guard comparing fewer fields is found among the first).
_MAX_PROBED_FIELDS = 32


def _one_field_changed(doc: dict[str, Any], named: set[tuple[str, ...]]) -> list[dict[str, Any]]:
    """`doc` once per field (nested objects walked), with that field and every version field (and those `named`)
    changed."""
    leaves = list(_leaves(doc, (), 0))
    versions = [p for p in leaves if p in named or any(_VERSION_KEY.search(k) for k in p)]
    base = doc
    for path in versions:
        base = _replaced(base, path)
    edited = [p for p in leaves if p not in versions]
    return [_replaced(base, path) for path in edited[:_MAX_PROBED_FIELDS]] or (
        [base] if versions else [])


#: JSON fields that name a resource rather than describe it: an edit keeps them.
_IDENTITY_KEY = re.compile(r"^(id|number|node_id|uuid|guid|[a-z0-9]+_id|[a-z0-9]+Id)$")


def _all_but_identity_changed(doc: dict[str, Any], named: set[tuple[str, ...]]) -> dict[str, Any]:
    """`doc` with every field changed but those that name the resource (unless they are `named`)."""
    for path in list(_leaves(doc, (), 0)):
        if path in named or not _IDENTITY_KEY.match(path[-1]):
            doc = _replaced(doc, path)
    return doc


def _leaves(doc: dict[str, Any], prefix: tuple[str, ...], depth: int) -> Iterator[tuple[str, ...]]:
    for key, value in doc.items():
        if isinstance(value, dict) and value and depth < 4:
            yield from _leaves(value, (*prefix, str(key)), depth + 1)
        else:
            yield (*prefix, str(key))


def _replaced(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """A copy of `doc` whose value at `path` is another of its kind."""
    head, rest = path[0], path[1:]
    value = doc.get(head)
    if rest and isinstance(value, dict):
        return {**doc, head: _replaced(value, rest)}
    changed: Any = (not value if isinstance(value, bool) else value + 1 if isinstance(value, int | float)
                    else f"{value}~{_PROBE}" if isinstance(value, str) else [*value, _PROBE] if isinstance(value, list)
                    else {**value, _PROBE: _PROBE} if isinstance(value, dict) else _PROBE)
    return {**doc, head: changed}


def irreversible_samples(rules: Iterable[UndoRule]) -> list[tuple[UndoRule, str, str, str]]:
    """(rule, method, host, path) for each irreversible rule whose host and path are literal: a request a policy
    can be asked about (`policy check` warns when one is allowed with no limit)."""
    out = []
    for rule in rules:
        if rule.fidelity != "irreversible" or rule.methods is None or not rule.paths:
            continue
        for host in (h.literal for h in rule.hosts if h.literal):
            for path in (p.literal for p in rule.paths if p.literal):
                out += [(rule, method, host, path) for method in sorted(rule.methods)]
    return out
