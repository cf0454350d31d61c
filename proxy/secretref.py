"""References to secret values (`{env: NAME}` or an inline value) whose repr never shows the value."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SecretRef:
    """A secret named by where it lives; `reveal()` is the only way to read it."""

    env: str | None = None
    inline: str | None = field(default=None, repr=False)

    def reveal(self) -> str | None:
        """The secret's value, or None when the environment variable is unset or empty."""
        if self.env is not None:
            return os.environ.get(self.env) or None
        return self.inline

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else "inline"

    def __repr__(self) -> str:
        return f"SecretRef({self.describe()}, ***)"

    __str__ = __repr__
