"""The network edge: the SSRF guard's rules and pinned addresses, name resolution, the proxy's own upstream client,
bounded body decoding, and the limits on client connections.

May import: the core, and mitmproxy's DNS types.
"""
