"""End-to-end tests: a real goex-proxy process, real clients, real HTTPS upstreams on 127.0.0.1."""
