"""`python -m goex_proxy` and the `goex-proxy` script: the command line, a Ctrl-C before it is up included."""

from __future__ import annotations

import sys

#: `cli.INTERRUPTED`, which cannot be imported while the interrupt lands in importing the command line.
INTERRUPTED = "goex-proxy: interrupted"


def run() -> None:
    """The command line; a Ctrl-C while it is still being imported (click and the command's module take tens of
    milliseconds) ends as one while a command runs does, not in a traceback."""
    try:
        from .cli import main

        main()
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED + "\n")  # click may not be imported yet
        sys.exit(130)


if __name__ == "__main__":
    run()
