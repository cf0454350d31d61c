"""The exception tree of goex-proxy; only the CLI maps these to exit codes.

    GoexError                 base of everything goex-proxy raises on purpose
    ├── ConfigError           a config or policy file is invalid; carries every Problem found
    ├── StateError            the state directory is missing or unusable (run `goex-proxy init`)
    ├── AuditError            the audit database cannot be read or written
    ├── VaultError            the vault cannot be opened (wrong key, damaged file) or written
    └── NotFound              a record (request id, agent) does not exist
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, located as precisely as the parser allows."""

    file: str
    line: int
    col: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.col}: {prefix}{self.message}"


class GoexError(Exception):
    """Base class of every error goex-proxy raises on purpose."""


class ConfigError(GoexError):
    """A config or policy file is invalid; `problems` lists every error found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = [p for p in problems if p.severity == "error"] or problems
        super().__init__("\n".join(str(p) for p in self.problems))


class StateError(GoexError):
    """The state directory is missing or unusable."""


class AuditError(GoexError):
    """The audit database cannot be read or written."""


class VaultError(GoexError):
    """The vault cannot be opened (wrong key, damaged file) or written."""


class NotFound(GoexError):
    """A record that was asked for does not exist."""
