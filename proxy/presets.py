"""Where policy files and undo packs are found: shipped ones (`builtin:NAME`) and paths relative to the config file."""

from __future__ import annotations

from pathlib import Path

BUILTIN = "builtin:"


def builtin_dir() -> Path:
    """Where the shipped presets live (package data `goex_proxy.policies`)."""
    import importlib.util  # the import system's own (importlib.resources costs 4 ms more at each start)

    spec = importlib.util.find_spec("goex_proxy.policies")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the shipped policies (package goex_proxy.policies) are not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def resolve(ref: str, base: Path) -> Path:
    """Turn a config reference (`builtin:NAME` or a path relative to the config file) into a path."""
    if ref.startswith(BUILTIN):
        name = ref[len(BUILTIN):]
        path = builtin_dir() / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"names no shipped policy '{name}' (shipped: {', '.join(builtin_names())})")
        return path
    return (base / Path(ref).expanduser()).resolve()


def undo_dir() -> Path:
    """Where the shipped undo rule packs live (package data `goex_proxy.policies/undo`)."""
    return builtin_dir() / "undo"


def undo_names() -> list[str]:
    return sorted(p.stem for p in undo_dir().glob("*.yaml"))


def resolve_undo(ref: str, base: Path) -> Path:
    """`builtin:NAME` (a shipped undo pack) or a path relative to the config file."""
    if ref.startswith(BUILTIN):
        path = undo_dir() / f"{ref[len(BUILTIN):]}.yaml"
        if not path.is_file():
            raise ValueError(f"names no shipped undo pack '{ref[len(BUILTIN):]}' (shipped: {', '.join(undo_names())})")
        return path
    return (base / Path(ref).expanduser()).resolve()
