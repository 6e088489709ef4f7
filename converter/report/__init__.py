"""What the toolchain tells people: `inspect`, the serving table, and pictures of errors."""
