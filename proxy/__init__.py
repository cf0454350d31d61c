"""goex-proxy: a policy-enforcing, auditing proxy for LLM agents that act on real accounts."""

from . import mitmaddons

__version__ = "0.1.0"

mitmaddons.defer()  # mitmproxy's addons package as goex-proxy needs it, whatever imports it first
