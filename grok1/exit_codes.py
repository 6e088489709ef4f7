"""The exit codes of `grok1`: 0 ok, 1 verification failed, 2 bad input or usage, 70 an internal
error (a bug), 130 interrupted."""

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130
