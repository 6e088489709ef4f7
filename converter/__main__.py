"""`python -m converter` runs the grok1 command line."""

from converter.cli import main

main()
