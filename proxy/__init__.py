"""goex-proxy: a policy-enforcing, auditing proxy for LLM agents that act on real accounts."""

__version__ = "0.1.0"
