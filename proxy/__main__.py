"""`python -m goex_proxy` runs the command line."""

from goex_proxy.cli import main

main()
