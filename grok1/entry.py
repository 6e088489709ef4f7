"""The `grok1` executable: the command line, and a quiet exit 130 when Ctrl-C comes while it is
still importing (before the command group's own handler is in place)."""

import sys

from grok1.exit_codes import EXIT_INTERRUPTED


def run() -> None:
    """Import the command line and run it."""
    try:
        from grok1.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    main()
