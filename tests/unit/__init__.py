"""Unit tests of the pure core and of each stage on mitmproxy test flows."""
