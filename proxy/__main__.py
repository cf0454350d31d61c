"""`python -m goex_proxy` and the `goex-proxy` script: the command line, a Ctrl-C before it is up included, and no
collector passes over what importing it made (for `log`, about 15 of its 110 ms)."""

from __future__ import annotations

import gc
import sys

#: `cli.INTERRUPTED`, which cannot be imported while the interrupt lands in importing the command line.
INTERRUPTED = "goex-proxy: interrupted"


def run() -> None:
    """The command line; a Ctrl-C while it is still being imported (click and the command's module take tens of
    milliseconds) ends as one while a command runs does, not in a traceback.

    Importing makes thousands of objects and no garbage, so the collector is off while it runs and on while the
    command does; at exit everything is frozen, so the interpreter's last collection has nothing to walk."""
    gc.disable()
    try:
        from .cli import main

        gc.enable()
        main()
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED + "\n")  # click may not be imported yet
        sys.exit(130)
    finally:
        gc.freeze()


if __name__ == "__main__":
    run()
