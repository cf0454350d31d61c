"""Generated policy files for the benchmarks: realistic mixes of literal hosts, host globs, path globs, CEL, a limit."""

from __future__ import annotations

import json

#: Services with literal hosts: (host, read paths, write path, JSON field the write condition looks at).
SERVICES = [
    ("slack.com", ["/api/conversations.{list,history,info}", "/api/users.info"], "/api/chat.postMessage", "channel"),
    ("api.github.com", ["/repos/*/*/issues/**", "/repos/*/*/pulls/**"], "/repos/*/*/issues", "title"),
    ("gmail.googleapis.com", ["/gmail/v1/users/*/messages/**", "/gmail/v1/users/*/labels"],
     "/gmail/v1/users/*/drafts", "raw"),
    ("api.stripe.com", ["/v1/charges/**", "/v1/customers/**"], "/v1/refunds", "amount"),
    ("api.openai.com", ["/v1/models/**", "/v1/files/**"], "/v1/chat/completions", "model"),
    ("www.googleapis.com", ["/drive/v3/files/**", "/calendar/v3/**"], "/drive/v3/files", "name"),
    ("api.notion.com", ["/v1/pages/**", "/v1/databases/**"], "/v1/pages", "parent"),
    ("api.linear.app", ["/graphql"], "/graphql", "query"),
    ("jira.example.com", ["/rest/api/3/issue/**", "/rest/api/3/search"], "/rest/api/3/issue", "fields"),
    ("hooks.example.com", ["/status/**"], "/hooks/*", "event"),
    ("api.sendgrid.com", ["/v3/templates/**"], "/v3/mail/send", "from"),
    ("api.twilio.com", ["/2010-04-01/Accounts/*/Messages/**"], "/2010-04-01/Accounts/*/Messages.json", "To"),
]

#: Rules whose hosts are globs: every request is checked against them (they cannot be indexed by host).
WILD_RULES = [
    {"name": "read s3 objects", "allow": {"hosts": ["*.s3.amazonaws.com", "**.s3.*.amazonaws.com"],
                                          "methods": ["GET", "HEAD"]}},
    {"name": "no s3 writes", "deny": {"hosts": ["*.s3.amazonaws.com", "**.s3.*.amazonaws.com"],
                                      "methods": ["PUT", "POST", "DELETE", "PATCH"], "reason": "S3 is read only"}},
    {"name": "read google apis", "allow": {"host": "**.googleapis.com", "methods": ["GET"], "path": "/discovery/**"}},
    {"name": "no admin anywhere", "deny": {"host": "**", "path": "/admin/**",
                                           "reason": "admin endpoints are for humans"}},
    {"name": "read example.org", "allow": {"host": "*.example.org", "methods": ["GET", "HEAD"], "path": "/**"}},
    {"name": "no example.org writes", "deny": {"host": "*.example.org", "methods": ["POST", "PUT", "DELETE"]}},
    {"name": "cdn assets", "allow": {"host": "cdn*.example.net", "methods": ["GET"], "path": "/assets/**"}},
    {"name": "no secrets paths", "deny": {"host": "**", "paths": ["/**/.env", "/**/secrets/**"],
                                          "reason": "secret material is never fetched by agents"}},
]


def _service_rules(host: str, reads: list[str], write: str, field: str, i: int) -> list[dict]:
    rules: list[dict] = [
        {"name": f"read {host}", "allow": {"host": host, "methods": ["GET", "HEAD"], "paths": reads}},
        {"name": f"write {host} when allowed",
         "allow": {"host": host, "methods": ["POST"], "path": write,
                   "when": f'has(request.json.{field}) && request.json.{field} != "" && agent != "intruder"'}},
        {"name": f"never delete on {host}",
         "deny": {"host": host, "methods": ["DELETE"], "reason": f"deleting on {host} is reserved to humans"}},
        {"name": f"no bulk on {host}",
         "deny": {"host": host, "paths": ["/**/bulk", "/**/batch/**", "/**/import"],
                  "reason": "bulk operations are not undoable"}},
        {"name": f"no large bodies to {host}",
         "deny": {"host": host, "methods": ["POST", "PUT", "PATCH"],
                  "when": ('size(request.body) > 100000 || ("content-type" in request.headers && '
                           'request.headers["content-type"].startsWith("multipart/"))'),
                  "reason": "uploads are denied"}},
        {"name": f"query {host} politely",
         "allow": {"host": host, "methods": ["GET"], "path": "/search/**",
                   "when": '!("limit" in request.query) || int(request.query.limit) <= 100'}},
        {"name": f"ops on {host}", "allow": {"host": host, "agents": ["ops"], "methods": ["*"], "path": "/**"}},
    ]
    if i % 2 == 0:
        rules.append({"name": f"no patch on {host}", "deny": {"host": host, "methods": ["PATCH", "PUT"]}})
    return rules


def decide_policy(rules_wanted: int = 100) -> dict:
    """A policy of exactly `rules_wanted` rules (default 100) with one limit, as a YAML-ready mapping."""
    rules: list[dict] = []
    for i, (host, reads, write, field) in enumerate(SERVICES):
        rules.extend(_service_rules(host, reads, write, field, i))
    rules.extend(WILD_RULES)
    # The one limit: Slack posts to #bots, at most 5 an hour per agent.
    rules.insert(0, {"name": "post to bots at most 5 an hour",
                     "allow": {"host": "slack.com", "methods": ["POST"], "path": "/api/chat.postMessage",
                               "when": 'request.json.channel == "C0BOTS"', "limit": {"count": 5, "per": "1h"}}})
    n = 0
    while len(rules) < rules_wanted:
        n += 1
        rules.append({"name": f"extra read {n}", "allow": {"host": f"svc{n}.internal.example.com",
                                                            "methods": ["GET"], "path": "/v1/**"}})
    if len(rules) > rules_wanted:
        raise ValueError(f"the generated policy has {len(rules)} rules, more than {rules_wanted}")
    return {"version": 1, "name": "bench-100", "rules": rules}


def throughput_policy(upstream_host: str = "127.0.0.1") -> dict:
    """24 rules; the allowing one matches the bench upstream, and a CEL deny rule is checked on every request."""
    rules: list[dict] = []
    for i, (host, reads, write, field) in enumerate(SERVICES[:4]):
        rules.extend(_service_rules(host, reads, write, field, i)[:4])
    rules.extend(WILD_RULES[:4])
    rules.extend([
        {"name": "bench no admin", "deny": {"host": upstream_host, "path": "/bench/admin/**",
                                             "reason": "admin is reserved to humans"}},
        {"name": "bench no danger", "deny": {"host": upstream_host,
                                             "when": '"x-danger" in request.headers',
                                             "reason": "requests marked dangerous are denied"}},
        {"name": "bench writes", "allow": {"host": upstream_host, "methods": ["POST"], "path": "/bench/items",
                                           "when": 'has(request.json.name)'}},
        {"name": "bench read", "allow": {"host": upstream_host, "methods": ["GET", "HEAD"], "path": "/bench/**"}},
    ])
    return {"version": 1, "name": "bench-throughput", "rules": rules}


def to_yaml(doc: dict) -> str:
    """YAML text for a policy mapping (JSON is YAML; one rule a line keeps it readable)."""
    lines = [f"version: {doc['version']}", f"name: {json.dumps(doc['name'])}"]
    if "review" in doc:
        lines.append(f"review: {json.dumps(doc['review'])}")
    lines.append("rules:")
    lines += [f"  - {json.dumps(rule)}" for rule in doc["rules"]]
    return "\n".join(lines) + "\n"


#: The one host of `api_policy`: a large REST API whose paths each have rules of their own.
API_HOST = "api.bigco.example"


def api_rule(i: int) -> dict:
    """Rule `i` of `api_policy`: resource `res{i}`, in ten kinds that repeat (allows by method, `*` and `**` paths,
    a CEL condition, alternatives in braces, denies with and without a method)."""
    res = f"res{i}"
    kind = i % 10
    if kind in (0, 3):
        return {"name": f"read {res}", "allow": {"host": API_HOST, "methods": ["GET", "HEAD"], "path": f"/v1/{res}/**"}}
    if kind in (1, 4):
        return {"name": f"read one {res}", "allow": {"host": API_HOST, "methods": ["GET"],
                                                     "paths": [f"/v1/{res}/*", f"/v1/{res}/*/versions/*"]}}
    if kind == 2:
        return {"name": f"create {res}", "allow": {"host": API_HOST, "methods": ["POST"], "path": f"/v1/{res}",
                                                   "when": 'has(request.json.name) && request.json.name != ""'}}
    if kind == 5:
        return {"name": f"edit {res}", "allow": {"host": API_HOST, "methods": ["PUT", "PATCH"],
                                                 "path": f"/v1/orgs/*/{res}/{{items,labels}}"}}
    if kind == 6:
        return {"name": f"never delete {res}", "deny": {"host": API_HOST, "methods": ["DELETE"],
                                                        "path": f"/v1/{res}/**",
                                                        "reason": f"deleting {res} is reserved to humans"}}
    if kind == 7:
        return {"name": f"no admin on {res}", "deny": {"host": API_HOST, "path": f"/v1/{res}/*/admin/**"}}
    if kind == 8:
        return {"name": f"comment on {res}", "allow": {"host": API_HOST, "methods": ["POST"],
                                                       "path": f"/v1/{res}/*/comments",
                                                       "when": 'size(request.body) < 10000'}}
    return {"name": f"search {res}", "allow": {"host": API_HOST, "methods": ["GET"], "path": f"/v1/search/{res}",
                                               "when": '!("limit" in request.query) || int(request.query.limit) <= 100'}}


def api_policy(rules_wanted: int) -> dict:
    """`rules_wanted` rules on one host (`API_HOST`), as a real API's policy has hundreds of paths, after a few rules
    on every host (host globs, as `WILD_RULES`)."""
    head = [WILD_RULES[3], WILD_RULES[7]]
    rules = head + [api_rule(i) for i in range(rules_wanted - len(head))]
    return {"version": 1, "name": f"api-{rules_wanted}", "rules": rules}
