"""`python -m grok1` runs the grok1 command line."""

from grok1.entry import run

run()
