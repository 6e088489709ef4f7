"""The options of a verification, as one object (what `grok1 verify` and the pipeline pass to
`verify.api.verify_checkpoints`). Light to import: the command line builds it at start."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from converter.errors import UsageError
from verify.tokens import TokenSource

__all__ = ["VerifyOptions"]


@dataclasses.dataclass(frozen=True)
class VerifyOptions:
    """How a verification runs: the pass/fail profile (None: inferred from how the candidate
    was made) and limits to override, the tokens, a stored reference run instead of a
    reference checkpoint, per-layer errors, the tensor-by-tensor check (None: for lossless
    with a reference), reference logits to keep (`keep_top_k`), and where the forward runs."""

    profile_name: str | None = None
    overrides: dict[str, float | None] = dataclasses.field(default_factory=dict)
    tokens: TokenSource = dataclasses.field(default_factory=TokenSource)
    reference_logits: Path | None = None
    per_layer: bool = False
    check_tensors: bool | None = None
    keep_top_k: int | None = None
    dtype: str = "float32"
    device: str = "cpu"
    executor: str = "local"
    ray_address: str | None = None
    workers: int = 2
    quiet: bool = False

    @classmethod
    def from_keywords(cls, **options: Any) -> VerifyOptions:
        """Options from flat keywords, as a program passes them (`grok1.verify(...,
        seq_len=128, per_layer=True)`): TokenSource's fields go into `tokens`."""
        token_fields = {f.name for f in dataclasses.fields(TokenSource)}
        tokens = {k: options.pop(k) for k in list(options) if k in token_fields}
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UsageError(f"unknown verify option(s): {', '.join(unknown)}")
        return cls(tokens=TokenSource(**tokens), **options)
