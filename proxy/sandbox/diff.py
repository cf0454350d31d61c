"""How a run's change to one path reads to a person: what happened to it, and a unified diff for text."""

from __future__ import annotations

import difflib
import stat

from ..printable import shown
from .changes import Change, Entry

#: Bytes of a side past which no line diff is made (sizes are shown instead).
MAX_DIFF_BYTES = 1 << 20



def listed(paths: list[str], most: int = 10) -> str:
    """Paths for a one-line message, escaped as `shown` does: the first `most` of them, then how many more."""
    text = ", ".join(shown(p) for p in paths[:most])
    return text + (f" and {len(paths) - most} more" if len(paths) > most else "")


def describe(change: Change) -> str:
    """One line: the action, the path, and kind, mode, size or link changes."""
    before, after = change.before, change.after
    notes = []
    if before is not None and after is not None:
        if before.kind != after.kind:
            notes.append(f"{before.kind} → {after.kind}")
        if before.mode != after.mode:
            notes.append(f"mode {_mode(before)} → {_mode(after)}")
        if before.kind == after.kind == "symlink" and before.target != after.target:
            notes.append(f"link {shown(before.target or '')} → {shown(after.target or '')}")
        if before.kind == after.kind == "file" and before.sha256 != after.sha256:
            notes.append(f"{before.size} → {after.size} bytes")
    else:
        entry = after or before
        assert entry is not None
        notes.append(_summary(entry))
    return f"{change.action:<8} {shown(change.path)}" + (f"  ({'; '.join(notes)})" if notes else "")


def _mode(entry: Entry) -> str:
    return format(stat.S_IMODE(entry.mode), "o")


def _summary(entry: Entry) -> str:
    if entry.kind == "symlink":
        return f"symlink → {shown(entry.target or '')}"
    if entry.kind == "file":
        return f"file, {entry.size} bytes, mode {_mode(entry)}"
    return f"{entry.kind}, mode {_mode(entry)}"


def unified(change: Change, before: bytes | None, after: bytes | None) -> list[str]:
    """A unified diff of a text file's two sides (either may be absent); a line saying why not for anything else.
    Each line ends in a newline: the caller prints them as they are, and the next change must not run on."""
    if (before is None and after is None) or (before or b"") == (after or b""):
        return []
    if len(before or b"") > MAX_DIFF_BYTES or len(after or b"") > MAX_DIFF_BYTES:
        return [f"(too large for a line diff: {len(before or b'')} → {len(after or b'')} bytes)\n"]
    old, new = _text(before), _text(after)
    if old is None or new is None:
        return [f"(binary: {len(before or b'')} → {len(after or b'')} bytes)\n"]
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 "/dev/null" if before is None else f"a/{shown(change.path)}",
                                 "/dev/null" if after is None else f"b/{shown(change.path)}")
    out = []
    for line in lines:
        body = line[:-1] if line.endswith("\n") else line
        out.append(shown(body.removesuffix("\r")) + ("\\r" if body.endswith("\r") else "") + "\n")
        if not line.endswith("\n"):
            out.append("\\ No newline at end of file\n")
    return out


def _text(data: bytes | None) -> str | None:
    if data is None:
        return ""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
