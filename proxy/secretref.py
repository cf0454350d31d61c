"""References to secret values (`{env: NAME}` or an inline value) whose repr never shows the value."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SecretRef:
    """A secret named by where it lives (environment, vault, or inline); `reveal()` is the only way to read it."""

    env: str | None = None
    inline: str | None = field(default=None, repr=False)
    vault: str | None = None

    def reveal(self, vault: Mapping[str, str] | None = None) -> str | None:
        """The secret's value, or None when it is not set (an unset variable, a name missing from the vault)."""
        if self.env is not None:
            return os.environ.get(self.env) or None
        if self.vault is not None:
            return (vault or {}).get(self.vault) or None
        return self.inline

    def describe(self) -> str:
        if self.env:
            return f"env:{self.env}"
        return f"vault:{self.vault}" if self.vault else "inline"

    def __repr__(self) -> str:
        return f"SecretRef({self.describe()}, ***)"

    __str__ = __repr__
