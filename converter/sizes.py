"""Sizes as users write them (`5GB`, `500MB`, `2GiB`)."""

from __future__ import annotations

from converter.errors import UsageError

__all__ = ["parse_size"]

_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "B": 1}


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000; a positive, finite number of bytes."""
    raw = text.strip().upper()
    number, unit = raw, 1
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if raw.endswith(suffix):
            number, unit = raw[: -len(suffix)], _UNITS[suffix]
            break
    try:
        value = float(number) * unit
    except ValueError:
        value = float("nan")
    if not 1 <= value < 2**63:
        raise UsageError(f"cannot use size {text!r}; write a positive size such as 5GB or 500MB")
    return int(value)
