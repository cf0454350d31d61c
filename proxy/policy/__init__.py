"""Policies: YAML rules with CEL conditions, loaded and checked (`load`), and decided as a pure function of a request
view (`engine`, `requestview`), with limits, the what-if of a draft against the log, and CEL itself.

May import: the core only. Nothing from mitmproxy, no I/O but reading policy files: the engine is tested, fuzzed and
reused (policy test, undo planning) without a proxy.
"""
