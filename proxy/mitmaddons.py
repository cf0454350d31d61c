"""mitmproxy's `addons` package without the thirty addons its `__init__` imports for mitmdump's default set: goex-proxy
uses six of them, and the rest (a Flask app, HAR export, the browser launcher among them) cost every process that
runs a proxy about 150 ms of CPU to start (bench/README.md). Each addon module is still imported when it is named;
`default_addons`, asked for, runs the package's `__init__` as mitmproxy has it."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

NAME = "mitmproxy.addons"


class _Deferred(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the package where Python would, and makes it without running its `__init__` until its one name of its
    own is asked for."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != NAME:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader_state, spec.loader = spec.loader, self  # the package's own loader, kept with what it loads
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # Python's own

    def exec_module(self, module: ModuleType) -> None:
        real = module.__spec__.loader_state  # type: ignore[union-attr]  # set by find_spec above

        def whole(name: str) -> Any:
            """`default_addons`, after the `__init__`. Never asked for an addon module before it is imported: the
            import system asks for the name, and imports the module when it is missing (as here)."""
            if name != "default_addons":
                raise AttributeError(f"module {NAME!r} has no attribute {name!r}")
            real.exec_module(module)
            return module.__dict__[name]

        module.__getattr__ = whole  # type: ignore[method-assign]


def defer() -> None:
    """From now on, `mitmproxy.addons` is imported without its `__init__` (unless it was imported already)."""
    if NAME not in sys.modules and not any(isinstance(f, _Deferred) for f in sys.meta_path):
        sys.meta_path.insert(0, _Deferred())
