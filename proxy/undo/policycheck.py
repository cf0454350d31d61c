"""`policy check`: policy files and undo packs told apart and checked, and the configured allow rules that let an agent
make a call no undo can take back, with no limit on it (here, because only `undo` may read both kinds of file)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import Config, config_problems, default_config_path, load_config
from ..errors import GoexError, Problem
from ..policy.load import check_policy_text, load_policy_set
from ..policy.requestview import RequestView
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
    return (check_pack_text if is_undo_pack(text) else check_policy_text)(text, str(file))[1]


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
