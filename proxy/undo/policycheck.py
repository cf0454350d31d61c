"""`policy check`: policy files and undo packs told apart and checked, and the configured allow rules that let an agent
make a call no undo can take back, with no limit on it (here, because only `undo` may read both kinds of file; SQL
rules' irreversible statements too), and
the conditions that nest one comprehension in another: possibly slow on every request their rule matches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import yamlsrc
from ..config import Config, config_problems, load_config
from ..configfile import default_config_path
from ..errors import GoexError, Problem
from ..policy.cel import CelSyntaxError, nested_comprehension
from ..policy.load import check_policy_text, expression_pos, load_policy_set
from ..policy.requestview import RequestView
from ..policy.sqlundo import unlimited_irreversible
from .plan import irreversible_samples
from .rules import check_pack_text, is_undo_pack, load_packs


def check(files: Sequence[Path], config_path: Path | None = None) -> tuple[list[Path], list[Problem]]:
    """The files checked and every problem in them: `files`, or with none given the config at `config_path` (default:
    the usual one), then its policies and undo packs if it has no errors, and the unconfined irreversible calls."""
    problems: list[Problem] = []
    targets = list(files)
    if not targets:
        path = config_path or default_config_path()
        problems += config_problems(path)
        if not problems:
            config = load_config(path)
            targets = [p.path for p in config.policies] + list(config.undo_packs)
            problems += unconfined_irreversible(config)
    for file in targets:
        problems += check_file(file)
    return targets, problems


def check_file(file: Path) -> list[Problem]:
    """The problems of one policy file or undo pack (which one it is, its text says)."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        return [Problem(str(file), 1, 1, f"cannot read policy file: {exc.strerror or exc}")]
    except UnicodeDecodeError as exc:
        return [Problem(str(file), 1, 1, f"policy file is not UTF-8 text (byte {exc.start})")]
    if is_undo_pack(text):
        return check_pack_text(text, str(file))[1]
    policy, problems = check_policy_text(text, str(file))
    sql = unlimited_irreversible(policy) if policy is not None else []
    return problems + sql + slow_conditions(text, str(file))


def slow_conditions(text: str, file: str) -> list[Problem]:
    """A warning, at its place, for each rule's `when` that nests a comprehension macro in another's body: its cost
    is the product of the lists' lengths, paid on every request the rule matches (and the proxy decides one request at
    a time). The policy's own problems are check_policy_text's."""
    doc, problems = yamlsrc.load(text, file)
    rules = doc.get("rules") if isinstance(doc, yamlsrc.YMap) and not problems else None
    if not isinstance(rules, yamlsrc.YList):
        return []
    lines = text.splitlines()
    found = []
    for index, rule in enumerate(rules):
        for effect in ("allow", "deny"):
            match = rule.get(effect) if isinstance(rule, yamlsrc.YMap) else None
            source = match.get("when") if isinstance(match, yamlsrc.YMap) else None
            nesting = nested_comprehension(source) if isinstance(source, str) else None
            if match is None or nesting is None:
                continue
            name = rule.get("name")
            line, col = expression_pos(lines, match.value_pos.get("when", match.pos),
                                       CelSyntaxError("", nesting.line, nesting.col))
            found.append(Problem(file, line, col, f"'rules[{index}].{effect}.when'"
                                 + (f" ('{name}')" if isinstance(name, str) else "")
                                 + f" nests .{nesting.inner}() in the body of .{nesting.outer}(): its cost is the "
                                   "product of the lists' lengths, paid on every request the rule matches; it may "
                                   "slow the proxy for all agents (test it with `goex-proxy policy test FILE "
                                   "--against-log`)", "warning"))
    return found


def unconfined_irreversible(config: Config) -> list[Problem]:
    """Warnings for allow rules that let an agent make a call no undo can take back, with no limit on it."""
    try:
        policies = load_policy_set(config.policy_sources)
        samples = irreversible_samples(load_packs(list(config.undo_packs)))
    except GoexError:
        return []  # the files' own errors are reported by check_file
    warnings = []
    for policy in policies.policies:
        for rule in policy.rules:
            if rule.effect != "allow" or rule.limit is not None:
                continue
            for undo_rule, method, host, path in samples:
                if any(h.matches(host) for h in rule.hosts) and rule.matches_plain(
                        RequestView(None, method, "https", host, 443, path), host_known=True):
                    warnings.append(Problem(policy.file, 1, 1, f"rule '{rule.name}' allows {method} {host}{path} "
                                                               f"with no limit, and it is {undo_rule.label}", "warning"))
    return warnings
