"""Shipped policy presets (YAML data, referenced as builtin:NAME)."""
