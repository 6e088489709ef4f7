"""`python -m grok1` runs the grok1 command line."""

from grok1.cli import main

main()
