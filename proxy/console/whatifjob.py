"""The console's what-if in a process of its own (`python -m goex_proxy.console.whatifjob CPU_S MEMORY_BYTES`): a
pasted draft is checked and replayed against the log under limits on CPU seconds and address space, at a lower
priority, so that a draft whose conditions take long or much memory (nested comprehensions over long lists) stops
there, killed at the console's time limit, while the proxy and the console keep answering (the CEL engine holds the
GIL while it evaluates, so no thread of theirs could).

The job comes on stdin as JSON: {"draft": path of the draft file, "sources": [[policy path, agents or null], …],
"audit_db": path, "shown": how many changes to send}. Two JSON lines go to stdout: the draft's problems and name as
soon as it is checked (so a replay stopped at the time limit still shows them), then the replay's result: the rows the
policy decided, the first `shown` changes and how many more; or an error. Only data crosses back: the console never
unpickles what this process, which read the draft, says."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The exit status when Python ran out of the address space it may use (the CEL engine aborts instead: SIGABRT).
OUT_OF_MEMORY = 3


def limit(cpu_s: int, memory: int) -> None:
    """Stop this process after `cpu_s` seconds of CPU (SIGXCPU, then SIGKILL a second later) and let it map at most
    `memory` bytes; and yield the CPU to the proxy. Never above a hard limit already set."""

    def lower(kind: int, soft: int, hard: int) -> None:
        ceiling = resource.getrlimit(kind)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        try:
            resource.setrlimit(kind, (soft, hard))
        except (ValueError, OSError):  # a platform without it (RLIMIT_AS on macOS)
            pass

    lower(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)
    lower(resource.RLIMIT_AS, memory, memory)
    try:
        os.nice(10)
    except OSError:
        pass


def run(job: dict[str, Any], say: Callable[[dict[str, Any]], None]) -> None:
    """Check the draft (with `policy check`'s warnings) and `say` its problems and name, then replay the log under the
    configured policies and with the draft in place of the policy of its name, as `policy test DRAFT --against-log`
    does, and `say` the result."""
    from ..audit import store as audit
    from ..errors import GoexError
    from ..policy import whatif
    from ..policy.load import check_policy_text
    from ..undo.policycheck import slow_conditions

    draft = Path(job["draft"])
    text = draft.read_text(encoding="utf-8")
    policy, problems = check_policy_text(text, "draft")
    problems += slow_conditions(text, "draft")
    checked = {"problems": [dataclasses.asdict(p) for p in problems], "name": policy.name if policy else ""}
    say(checked)
    if policy is None or any(p.severity == "error" for p in problems):
        return say({"error": "the draft has errors; nothing was replayed"})
    sources = [(Path(path), frozenset(agents) if agents is not None else None) for path, agents in job["sources"]]
    try:
        current, candidate = whatif.policy_sets(sources, [draft])
        conn = audit.open_db(Path(job["audit_db"]), readonly=True)
    except GoexError as exc:
        return say({"error": str(exc)})
    try:
        seen, changes = whatif.replay(audit.iter_rows(conn), current, candidate)
    finally:
        conn.close()
    shown = int(job["shown"])
    say({"seen": seen, "changes": [dataclasses.asdict(c) for c in changes[:shown]],
         "more": max(0, len(changes) - shown)})


def main(argv: list[str]) -> int:
    limit(int(argv[0]), int(argv[1]))

    def say(part: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(part) + "\n")
        sys.stdout.flush()

    try:
        run(json.loads(sys.stdin.read()), say)
    except MemoryError:
        os._exit(OUT_OF_MEMORY)  # nothing to say it with: the parent words it
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
