"""`undo ID --propose`: ask the supervising model for compensating requests where no undo rule knows the way.

Everything here is pure (the scrubber comes from `llm.secret_scrubber`): `proposeflow` asks the model, records the
call and runs the accepted steps through the pipeline. The model is treated as an untrusted author: what it is shown
is scrubbed of every secret goex-proxy knows; what it answers is a proposal that must be well-formed, stay on the
original origin, carry no credential of its own and be allowed by policy before a person is even asked to confirm it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

from ..config import Config
from ..credentials.kinds import PLACEHOLDER_PREFIX, Credential
from ..credentials.redact import REDACTED, SENSITIVE_HEADERS, SecretScrubber, redact_value
from ..errors import GoexError, NotFound
from ..hostkey import host_key
from ..policy.engine import Decision, PolicySet, decide
from ..policy.limits import LimitCounters
from ..policy.requestview import RequestView, canonical_path
from ..undo.plan import SAFE_METHODS, UNSURE_URL, Exchange, Plan, Step, on_origin, plan, unsure_url
from ..undo.run import DONE, SENT

#: At most this many steps: a compensation is a handful of requests, and every one is shown to a person.
MAX_STEPS = 10
#: A compensation changes something back; a read would only make the plan look longer than it is.
METHODS = ("DELETE", "PATCH", "POST", "PUT")
#: The keys a step may have; an unknown one (`json`, `query`) would be dropped silently, so it is refused instead.
STEP_KEYS = frozenset({"method", "url", "headers", "body", "why"})
#: Characters of a body, per part, shown to the model; the rest is cut (the prompt says so).
MAX_PROMPT_BODY = 16_000
#: Headers a proposal may not set: who the request is for and how it is framed are the proxy's business (a Host
#: header would send it to another virtual host than its URL names; X-Goex-* are the undo's own instructions).
FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
                             "trailer", "upgrade", "expect", "proxy-connection", "forwarded", "x-forwarded-for",
                             "x-forwarded-host", "x-forwarded-proto", "x-real-ip"})
#: Header names that look like they carry a credential, beyond the known `SENSITIVE_HEADERS`.
_CREDENTIAL_NAME = re.compile(r"auth|token|secret|passw|api[-_]?key|cookie|session|signature|credential", re.I)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Response fields whose value names a resource (`id`, `user_id`, `postId`, `uuid`, `number`): a path segment or
#: value equal to one is that resource's identifier, so a saved rule reads it from each new exchange.
_ID_KEY = re.compile(r"^(id|uuid|number)$|(_id|Id|ID|_uuid)$")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ProposalError(GoexError):
    """The model's proposal is refused (malformed, off origin, carrying a credential, denied by policy) or cannot be
    saved as a rule; nothing was run."""


@dataclass(frozen=True)
class ProposedStep:
    """One compensating request as the model wrote it (`body` as given: a JSON value, a string, or None), and the
    `Step` it becomes."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: Any
    why: str

    @property
    def raw_body(self) -> bool:
        """Sent as written: a string, or JSON with the model's own Content-Type (kept, not replaced)."""
        return isinstance(self.body, str) or any(k.lower() == "content-type" for k, _ in self.headers)

    def step(self) -> Step:
        """The request as the planner would render it: a JSON body without a Content-Type gets application/json
        appended, as a rule's `json:` does, so a saved rule renders the very same step."""
        headers, body = self.headers, None
        if isinstance(self.body, str):
            body = self.body.encode()
        elif self.body is not None:
            body = json.dumps(self.body).encode()
            if not self.raw_body:
                headers += (("Content-Type", "application/json"),)
        return Step(self.method, self.url, headers, body, self.why, repeatable=self.method in ("PUT", "DELETE"))


@dataclass(frozen=True)
class Proposal:
    """The model's compensation for one request: its steps in order, and its explanation."""

    steps: tuple[ProposedStep, ...]
    explanation: str

    def plan(self, request_id: str, row: dict[str, Any], model: str) -> Plan:
        """A plan `carry_out` runs like any other: journaled, each step through the pipeline, audited as the undo."""
        return Plan(request_id, "plan", f"proposed by a model ({model})", "proposed",
                    steps=tuple(s.step() for s in self.steps), variables=Exchange.from_row(row).variables())


# --- what the model is shown ---------------------------------------------------------------------------------------


def injected_headers(config: Config, host: str) -> frozenset[str]:
    """The headers (lower case) the proxy fills in with a credential for requests to `host`."""
    names: set[str] = set()
    for c in config.credentials.values():
        if not any(h.matches(host) for h in c.hosts) or c.inject.kind == "query":  # a query's is scrubbed in the URL
            continue
        names.add(c.inject.name.lower() if c.inject.kind == "header" else "authorization")
        if c.inject.kind == "aws_sigv4":
            names |= {"x-amz-security-token", "x-amz-content-sha256", "x-amz-date"}
    return frozenset(names)


def credential_names(credentials: Iterable[Credential]) -> tuple[frozenset[str], frozenset[str]]:
    """The header names and query parameters any credential is injected as: a proposal must not set them."""
    headers = {c.inject.name.lower() for c in credentials if c.inject.kind == "header"}
    query = {c.inject.name for c in credentials if c.inject.kind == "query"}
    return frozenset(headers), frozenset(query)


def allowed_summaries(policies: PolicySet, agent: str, host: str, most: int = 12) -> list[str]:
    """What the agent's policy allows on `host`, in a few words each: the model should propose only that."""
    out = []
    for c in policies.candidates(host):
        rule = c.rule
        if rule.effect != "allow" or not c.policy.applies_to(agent) or rule.protocol not in (None, "http"):
            continue
        if rule.agents is not None and agent not in rule.agents:
            continue
        if c.host_known or not rule.hosts or any(h.matches(host) for h in rule.hosts):
            out.append(rule.summary())
    return out[:most]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


SYSTEM = """You are the undo assistant of goex-proxy, a proxy through which an AI agent used a real account. The agent \
made the HTTP request shown below, and no undo rule knows how to take it back. Propose the compensating HTTP \
request(s) that undo its effect as exactly as the API allows. A person reads your proposal before anything is sent.

Answer with ONLY one JSON object, no prose around it and no code fence:
{"steps": [{"method": "DELETE", "url": "ORIGIN/path", "headers": {}, "body": null, "why": "what this step undoes"}], \
"explanation": "why these steps undo the request, and what they cannot restore"}

Rules:
- method: one of METHODS.
- url: absolute, on the origin of the original request: ORIGIN. Any other scheme, host or port is refused.
- headers: an object of string values; only what the API needs. Never include credentials (Authorization, Cookie, \
API keys, tokens, signatures): the proxy injects them itself. Values shown as <redacted>, <set by the proxy> or \
goex-placeholder-... are not real and must not be copied.
- body: a JSON value for a JSON API (sent as application/json), a string for any other body, or null for none.
- At most MAX steps, sent in order; each must succeed (2xx) before the next is sent.
- Only requests the agent's policy allows can run. POLICY
- If the request cannot be undone, or you lack what you would need to know, answer {"steps": [], "explanation": \
"why"}."""


def prompt_for(row: dict[str, Any], scrubber: SecretScrubber, allowed: Sequence[str] = (),
               injected: Iterable[str] = ()) -> list[dict[str, str]]:
    """The system and user messages asking for the undo of audit `row`: the recorded request, response and
    pre-image, with credential headers redacted, the headers the proxy injects marked as such, bodies cut at
    `MAX_PROMPT_BODY` characters, and every field (then the whole text) passed through `scrubber`. `allowed`: the
    agent's allow rules on this host, so that the model proposes what policy lets through."""
    hidden = {name.lower() for name in injected}

    def headers(text: Any) -> list[list[str]]:
        pairs = [(str(k), str(v)) for k, v in json.loads(text)] if text else []
        return [[k, "<set by the proxy>" if k.lower() in hidden else scrubber.text(redact_value(k, v))]
                for k, v in pairs]

    def body(raw: bytes | None, size: int | None) -> Any:
        if not raw:
            return None if not size else f"({size} bytes, not recorded)"
        try:
            text = scrubber.text(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError:
            return f"({size or len(raw)} bytes of binary data, not shown)"
        note = f" [only the first {len(raw)} of {size} bytes were recorded]" if size and size > len(raw) else ""
        if len(text) > MAX_PROMPT_BODY:
            return text[:MAX_PROMPT_BODY] + f" [cut: {len(text)} characters in all]{note}"
        try:
            return json.loads(text) if not note else text + note
        except ValueError:
            return text

    exchange: dict[str, Any] = {
        "agent": row.get("agent"),
        "request": {"method": row["method"], "url": scrubber.text(str(row["url"])),
                    "headers": headers(row.get("req_headers")), "body": body(row.get("req_body"), row.get("req_body_size"))},
        "response": {"status": row.get("status"), "headers": headers(row.get("resp_headers")),
                     "body": body(row.get("resp_body"), row.get("resp_body_size"))},
    }
    if row.get("pre_status") is not None:
        exchange["pre_image"] = {
            "note": "the resource as the proxy read it (GET) just before forwarding the agent's request",
            "status": row["pre_status"], "headers": headers(row.get("pre_headers")),
            "body": body(row.get("pre_body"), row.get("pre_body_size"))}
    policy = ("It allows: " + "; ".join(scrubber.text(a) for a in allowed) + ".") if allowed else \
        "It names no request on this host that would be allowed."
    system = (SYSTEM.replace("ORIGIN", _origin(str(row["url"]))).replace("METHODS", ", ".join(METHODS))
              .replace("MAX", str(MAX_STEPS)).replace("POLICY", policy))
    user = ("The request to undo, as goex-proxy recorded it (secrets redacted):\n"
            + json.dumps(exchange, indent=1, ensure_ascii=False))
    return [{"role": "system", "content": scrubber.text(system)}, {"role": "user", "content": scrubber.text(user)}]


# --- what the model answers ----------------------------------------------------------------------------------------


def parse_proposal(data: Any, row: dict[str, Any], credentials: Iterable[Credential] = ()) -> Proposal:
    """The model's parsed JSON answer as a Proposal, or ProposalError saying what is wrong with it: not an object,
    no steps, too many, a bad method, a URL that is not absolute http(s) on the original origin, headers that are not
    strings or that carry a credential (or a placeholder of one) or frame the request, an unknown step field."""
    if not isinstance(data, dict):
        raise _refused(f"the model's answer is a JSON {_kind(data)}, not an object with 'steps'")
    steps, explanation = data.get("steps"), data.get("explanation")
    explanation = explanation.strip() if isinstance(explanation, str) else ""
    if "steps" not in data or not isinstance(steps, list):
        raise _refused("the model's answer has no 'steps' list")
    if not steps:
        raise _refused("the model proposed no compensating request" + (f": {explanation}" if explanation else ""))
    if len(steps) > MAX_STEPS:
        raise _refused(f"the model proposed {len(steps)} steps; at most {MAX_STEPS} are accepted")
    cred_headers, cred_query = credential_names(credentials)
    original = str(row["url"])
    return Proposal(tuple(_step(i, s, original, cred_headers, cred_query) for i, s in enumerate(steps, start=1)),
                    explanation)


def _step(n: int, raw: Any, original: str, cred_headers: frozenset[str], cred_query: frozenset[str]) -> ProposedStep:
    where = f"step {n}"
    if not isinstance(raw, dict):
        raise _refused(f"{where} is a JSON {_kind(raw)}, not an object")
    unknown = sorted(set(raw) - STEP_KEYS)
    if unknown:
        raise _refused(f"{where} has the unknown field {unknown[0]!r} (a step has {', '.join(sorted(STEP_KEYS))})")
    method = raw.get("method")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise _refused(f"{where}'s method {method!r} is not a compensating request (expected {', '.join(METHODS)})")
    method = method.upper()
    url = _url(where, raw.get("url"), original, cred_query)
    where = f"{where} ({method} {url})"
    headers = raw.get("headers")
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        raise _refused(f"{where}: 'headers' is a JSON {_kind(headers)}, not an object of strings")
    pairs = []
    for name, value in headers.items():
        if not isinstance(value, str) or not _TOKEN.fullmatch(name):
            raise _refused(f"{where}: header {name!r} is not a header name with a string value")
        lower = name.lower()
        if lower in SENSITIVE_HEADERS or lower in cred_headers or _CREDENTIAL_NAME.search(lower):
            raise _refused(f"{where} sets the credential header {name!r}; the proxy injects credentials itself")
        if lower in FRAMING_HEADERS or lower.startswith(("proxy-", "x-goex-")):
            raise _refused(f"{where} sets the header {name!r}, which only the proxy may set")
        if any(c in value for c in "\r\n\0"):
            raise _refused(f"{where}: header {name!r} has a line break in its value")
        pairs.append((name, value))
    body = raw.get("body")
    why = raw.get("why")
    if why is not None and not isinstance(why, str):
        raise _refused(f"{where}: 'why' is a JSON {_kind(why)}, not a string")
    step = ProposedStep(method, url, tuple(pairs), body, (why or "").strip())
    text = json.dumps([pairs, body], ensure_ascii=False)
    if PLACEHOLDER_PREFIX in text or PLACEHOLDER_PREFIX in url or REDACTED in text:
        raise _refused(f"{where} carries a credential placeholder or a redacted value (the proxy injects "
                       "credentials itself)")
    if len(step.step().body or b"") > 1_000_000:
        raise _refused(f"{where}'s body is larger than 1 MB")
    return step


def _url(where: str, url: Any, original: str, cred_query: frozenset[str]) -> str:
    if not isinstance(url, str) or not url:
        raise _refused(f"{where} has no 'url' string")
    if any(c.isspace() or ord(c) < 32 for c in url) or len(url) > 8000:
        raise _refused(f"{where}'s URL {url[:200]!r} has spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise _refused(f"{where}'s URL {url[:200]!r} is not an absolute http(s) URL (give the full URL on "
                       f"{_origin(original)})")
    if "@" in parts.netloc:
        raise _refused(f"{where}'s URL {url[:200]!r} carries a user name or password")
    if parts.fragment or url.endswith("#"):
        raise _refused(f"{where}'s URL {url[:200]!r} has a fragment ('#')")
    absolute = on_origin(url, original)
    if absolute is None:
        raise _refused(f"{where} is aimed at {_origin(url)}, not at the origin of the request it undoes "
                       f"({_origin(original)}); a compensation never leaves the original origin")
    if canonical_path(parts.path or "/") is None:
        raise _refused(f"{where}'s URL path {parts.path[:200]!r} is ambiguous (dot segments, '//', ';' or a backslash)")
    named = {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)} & cred_query
    if named:
        raise _refused(f"{where}'s URL sets the credential parameter {sorted(named)[0]!r}; the proxy injects "
                       "credentials itself")
    return absolute


def check_policy(proposal: Proposal, agent: str, policies: PolicySet, counts: LimitCounters, now: float
                 ) -> list[Decision]:
    """Each step decided as the pipeline will decide it for `agent` (its limits counted as the steps go), before any
    is sent: one the policy denies refuses the whole proposal, naming the step, the rule and why. The pipeline
    decides each again when it is sent; this check is so that nothing is sent of a plan that cannot finish."""
    decisions = []
    for n, proposed in enumerate(proposal.steps, start=1):
        step = proposed.step()
        parts = urlsplit(step.url)
        path = canonical_path(parts.path or "/") or "/"
        view = RequestView(agent, step.method, parts.scheme.lower(), host_key(parts.hostname or ""),
                           parts.port or (443 if parts.scheme.lower() == "https" else 80), path,
                           tuple(parse_qsl(parts.query, keep_blank_values=True)),
                           tuple((k.lower(), v) for k, v in step.headers), step.body or b"")
        d = decide(view, policies, now, counts)
        if d.effect == "allow" and "%2F" in path:  # as the pipeline does: allowed read either way
            other = decide(RequestView(view.agent, view.method, view.scheme, view.host, view.port,
                                       path.replace("%2F", "/"), view.query, view.headers, view.body),
                           policies, now, counts)
            d = d if other.effect == "allow" else other
        if d.effect != "allow":
            rule = f" (rule {d.rule})" if d.rule else ""
            raise _refused(f"step {n} ({step.describe()}) would be denied by policy{rule}: {d.reason}")
        counts.record(d.count_limits, agent, now)
        decisions.append(d)
    return decisions


def _refused(why: str) -> ProposalError:
    return ProposalError(f"refused the model's proposal: {why}; nothing was run")


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


# --- an accepted proposal as an undo rule --------------------------------------------------------------------------


#: A saved rule's guard for a DELETE of what the agent's request made: it is gone already, or still as the agent's
#: answer left it (its ETag, else its JSON, else its bytes). Other proposals are saved with no guard: `unguarded`.
CREATED_UNCHANGED = (
    'read.status == 404 || read.status == 410 || (read.status == 200 && ("etag" in response.headers ? "etag" in '
    'read.headers && read.headers["etag"] == response.headers["etag"] : response.content_type.endsWith("json") ? '
    'read.json == response.json : size(response.body) > 0 && read.body == response.body))')


def rule_yaml(row: dict[str, Any], proposal: Proposal, pack: str = "proposed", model: str = "a model") -> str:
    """An undo pack of one rule that plans `proposal` for `row`, and for later requests of the same kind.

    The rule matches the method, the host and the request's path, where a path segment equal to an identifier in the
    response (`id`, `*_id`, `uuid`, `number`: see `_ID_KEY`) becomes `*`. In the steps, values the exchange supplies
    become templates: the request's URL, a generalised path segment, the response's identifier, the `Location` it
    answered with, and in a JSON body any value equal to the pre-image's at the same place (then the rule reads a
    pre-image itself, `GET ${request.url}`). Everything else stays literal, and the rule's `when` requires what its
    templates read. Its class is `lossy` (or `needs-preimage`): a model's proposal is not known to restore everything.
    A single DELETE gets a guard (the resource gone, or as the agent's answer left it); other rules have none, so
    their rows are `unguarded` until a person adds one.

    The text is proved before it is returned: it must load as an undo pack, and the planner given `row` and this
    rule alone must produce exactly the proposed steps; ProposalError otherwise (so nothing runs that could not be
    saved as asked).
    """
    import yaml

    from ..undo.rules import check_pack_text

    exchange = Exchange.from_row(row)
    ties = _Ties(exchange)
    steps = [ties.step(s) for s in proposal.steps]
    method, host, _ = exchange.target()
    status = exchange.status or 0
    rule: dict[str, Any] = {
        "name": f"undo {method} {ties.match_path} (proposed by {model})",
        "match": {"host": host, "methods": [method], "path": ties.match_path},
    }
    if ties.conditions:
        rule["when"] = " && ".join(ties.conditions)
    rule["effective"] = ("response.status >= 200 && response.status < 300" if 200 <= status < 300
                         else f"response.status == {status}")
    rule["class"] = "needs-preimage" if ties.uses_pre else "lossy"
    if ties.uses_pre:
        rule["preimage"] = {"method": "GET", "url": "${request.url}"}
    if len(steps) == 1 and steps[0]["method"] == "DELETE":  # the common proposal: delete what the agent made
        rule["guard"] = {"read": {"method": "GET", "url": steps[0]["url"]}, "expect": CREATED_UNCHANGED,
                         "conflict": "the resource was changed after the agent's request"}
    rule["undo"] = steps
    doc = {"version": 1, "name": pack, "rules": [rule]}
    header = [f"# Undo rule made from a proposal by {_line(model)} for request {_line(str(row['id']))}",
              f"# ({_line(str(row['method']))} {_line(str(row['url']))}), accepted and carried out by a person.",
              "# Values taken from each exchange are ${...} templates; everything else is literal, so check that it",
              "# fits every request this rule matches before you rely on it, then add this file to `undo_rules`."]
    if ties.uses_pre:
        header.append("# The steps put back values of the pre-image, which this rule reads as GET ${request.url} before "
                      "each request\n# it matches; change `preimage.url` if the resource is read elsewhere.")
    if proposal.explanation:
        header.append("# The model's explanation: " + _line(proposal.explanation)[:300])
    text = "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    rules, problems = check_pack_text(text, f"{pack}.yaml")
    errors = [str(p) for p in problems if p.severity == "error"]
    if errors or not rules:
        raise ProposalError(f"cannot save the proposal as an undo rule: {errors[0] if errors else 'it has no rule'}; "
                            "nothing was run")
    planned = plan(str(row["id"]), exchange, rules)
    wanted = [_sent(s.step()) for s in proposal.steps]
    if planned.verdict != "plan" or [_sent(s) for s in planned.steps] != wanted:
        why = planned.reason if planned.verdict != "plan" else "it plans other requests than the proposal's"
        raise ProposalError(f"cannot save the proposal as an undo rule that reproduces it ({why}); nothing was run")
    return text


def _line(text: str) -> str:
    """Text fit for one comment line."""
    return " ".join(text.split())


def _sent(step: Step) -> tuple[str, str, tuple[tuple[str, str], ...], bytes | None]:
    """What a step sends, a JSON body as its canonical text: the CEL engine hands a rendered object back with its
    keys in another order, which is the same JSON."""
    return step.method, step.url, step.headers, canonical_json(step.body)


def canonical_json(body: bytes | None) -> bytes | None:
    """A JSON body with sorted keys (other bodies as they are)."""
    try:
        return json.dumps(json.loads(body), sort_keys=True).encode() if body else body
    except ValueError:
        return body


def _literal(text: str) -> str:
    """Text as a template that renders to itself."""
    return text.replace("${", "$${")


def _glob_literal(segment: str) -> str:
    """A path segment as a glob: glob characters in it match themselves only loosely (one character, `?`)."""
    return re.sub(r"[*?{}\[\],]", "?", segment)


def _selector(root: str, keys: Sequence[str]) -> str:
    return root + "".join(f".{k}" if _IDENT.fullmatch(k) else f"[{json.dumps(k)}]" for k in keys)


def _joined(base: str, url: str) -> str | None:
    """`url` made absolute against `base`; None for one the parser refuses (an answer's `Location: http://[x`)."""
    try:
        return urljoin(base, url)
    except ValueError:
        return None


class _Ties:
    """Which values of the proposed steps the exchange supplies, as templates, and what the rule must then require."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.variables = exchange.variables()
        self.request = self.variables["request"]
        response = self.variables["response"]
        pre_status = self.variables["pre"].get("status")
        self.pre = self.variables["pre"] if isinstance(pre_status, int) and 200 <= pre_status < 300 else {}
        self.conditions: list[str] = []
        self.uses_pre = False
        # Identifiers in the response: the value's text -> the keys that lead to it (first found, two levels deep).
        self.ids: dict[str, tuple[str, ...]] = {}
        top = response["json"] if isinstance(response["json"], dict) else {}
        for key, value in top.items():
            self._id(key, value, (key,))
        for key, value in top.items():
            if isinstance(value, dict):
                for inner, item in value.items():
                    self._id(inner, item, (key, inner))
        segments = self.request["path"].split("/")[1:]
        self.general = {i for i, seg in enumerate(segments) if seg in self.ids and "%" not in seg}
        self.match_path = "/" + "/".join("*" if i in self.general else _glob_literal(seg)
                                         for i, seg in enumerate(segments))
        self.segments = segments

    def _id(self, key: str, value: Any, keys: tuple[str, ...]) -> None:
        if _ID_KEY.search(key) and isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            self.ids.setdefault(str(value), keys)

    def _require(self, condition: str) -> None:
        if condition not in self.conditions:
            self.conditions.append(condition)

    def _has(self, root: str, keys: Sequence[str]) -> None:
        for i, key in enumerate(keys):
            self._require(f"{json.dumps(key)} in {_selector(root, keys[:i])}")

    def _segment(self, seg: str) -> str:
        """A path segment of a step's URL: a generalised segment of the request's, an identifier of the response,
        or literal."""
        if "%" not in seg and seg:
            for i in sorted(self.general):
                if self.segments[i] == seg:
                    return f"${{request.segments[{i}]}}"
            if seg in self.ids:
                keys = self.ids[seg]
                self._has("response.json", keys)
                return "${" + _selector("response.json", keys) + "}"
        return _literal(seg)

    def url(self, url: str) -> str:
        if url == self.exchange.url:
            return "${request.url}"
        if url == self.request["base_url"]:
            return "${request.base_url}"
        location = self.variables["response"]["headers"].get("location")
        if location and _joined(self.exchange.url, location) == url:
            self._require('"location" in response.headers')
            return '${response.headers["location"]}'
        parts = urlsplit(url)
        path = "/".join(self._segment(seg) for seg in parts.path.split("/"))
        return (_literal(f"{parts.scheme}://{parts.netloc}") + path
                + (_literal(f"?{parts.query}") if parts.query else ""))

    def value(self, value: Any, keys: tuple[str, ...] = (), top: bool = True) -> Any:
        """A JSON value of a step's body, as a rule's `json:` tree (`keys`: where it is in the body's objects)."""
        pre = self.pre.get("json") if self.pre else None
        if top and pre and value == pre and type(value) is type(pre):
            self._pre(())
            return "${pre.json}"
        if isinstance(value, dict):
            return {k: self.value(v, (*keys, k) if keys or top else (), False) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, (), False) for v in value]
        if isinstance(value, str | int) and not isinstance(value, bool):
            at = pre
            for key in keys:
                at = at.get(key) if isinstance(at, dict) else None
            if keys and at is not None and at == value and type(at) is type(value):
                self._pre(keys)
                return "${" + _selector("pre.json", keys) + "}"
            text = str(value)
            if isinstance(value, str) and "%" not in text:
                for i in sorted(self.general):
                    if self.segments[i] == text:
                        return f"${{request.segments[{i}]}}"
            if text in self.ids and type(self._id_value(self.ids[text])) is type(value):
                self._has("response.json", self.ids[text])
                return "${" + _selector("response.json", self.ids[text]) + "}"
        return _literal(value) if isinstance(value, str) else value

    def _id_value(self, keys: tuple[str, ...]) -> Any:
        at: Any = self.variables["response"]["json"]
        for key in keys:
            at = at[key]
        return at

    def _pre(self, keys: Sequence[str]) -> None:
        self.uses_pre = True
        self._require("pre.status >= 200 && pre.status < 300")
        self._has("pre.json", keys)

    def step(self, proposed: ProposedStep) -> dict[str, Any]:
        out: dict[str, Any] = {"method": proposed.method, "url": self.url(proposed.url)}
        if proposed.headers:
            out["headers"] = {k: _literal(v) for k, v in proposed.headers}
        if proposed.body is not None:
            if proposed.raw_body:
                body = proposed.step().body or b""
                out["body"] = _literal(body.decode("utf-8"))
            else:
                out["json"] = self.value(proposed.body)
        if proposed.why:
            out["why"] = proposed.why
        return out


def check_row(row: dict[str, Any], the_plan: Plan, journal_states: dict[int, str]) -> None:
    """Whether a model may be asked about this row at all: only a request that reached the upstream, changed
    something, has an outcome, and that no rule plans (or rules irreversible or not effective); raises otherwise.
    A row an earlier undo already sent steps for is refused: its journal is by step number, and a new proposal's
    steps are not the earlier ones."""
    rid = str(row["id"])
    if row.get("undo_of"):
        raise GoexError(f"cannot propose an undo of {rid}: it is itself the undo of {row['undo_of']}")
    if row.get("decision") not in ("allow", "report"):
        raise NotFound(f"nothing to undo for {rid}: the proxy did not let it through ({row.get('decision')})")
    if str(row["method"]).upper() in SAFE_METHODS:
        raise NotFound(f"nothing to undo for {rid}: a {row['method']} changes nothing")
    if row.get("status") is None:
        raise GoexError(f"cannot propose an undo of {rid}: it has no recorded outcome (it may or may not have "
                        "happened)")
    if unsure_url(str(row.get("url") or "")):
        raise GoexError(f"cannot propose an undo of {rid}: {UNSURE_URL}")
    if the_plan.verdict == "plan":
        raise GoexError(f"the undo rule {the_plan.rule} already plans the undo of {rid}: run `goex-proxy undo {rid}` "
                        "without --propose")
    if the_plan.verdict == "not effective":
        raise NotFound(f"nothing to undo for {rid}: {the_plan.reason} (rule {the_plan.rule})")
    if the_plan.verdict == "irreversible":
        raise GoexError(f"the undo rule {the_plan.rule} says {rid} is irreversible ({the_plan.reason}); no model is "
                        "asked to undo it")
    check_not_started(rid, journal_states)


def check_not_started(rid: str, journal_states: dict[int, str]) -> None:
    """Refuse a row an undo already sent steps for (checked again under the undo lock, just before running)."""
    started = [s for s in journal_states.values() if s in (DONE, SENT)]
    if started:
        raise GoexError(f"an earlier undo of {rid} already sent {len(started)} step(s) (see `goex-proxy log`); "
                        "--propose only starts an undo afresh")


def describe_body(step: Step, most: int = 300) -> str:
    """A step's body in a line, for the person confirming it."""
    text = (step.body or b"").decode("utf-8", "replace")
    return text if len(text) <= most else text[:most] + f"… ({len(text)} characters)"
