"""Keywords gathered into an option object: what the library verbs and the command line both do
with the flat options people pass."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["split_fields"]


def split_fields(cls: type, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The dataclass `cls` made of the keywords named like its fields, and the other keywords."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return (cls(**{k: v for k, v in options.items() if k in fields}),
            {k: v for k, v in options.items() if k not in fields})
