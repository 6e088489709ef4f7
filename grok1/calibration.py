"""The token ids a calibrating scheme (`quantize --scheme nvfp4`) runs through the model: text
(`--text-file`, else the shipped natural text) or, for a model without Grok-1's vocabulary,
seeded random ids; each sequence at most 512 tokens (or the model's context)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converter.errors import UsageError
from converter.layouts import open_checkpoint
from quant.registry import SCHEMES
from verify.tokens import MAX_TEXT_TOKENS, TokenSource, choose_tokens

__all__ = ["CALIBRATION_SEQ_LEN", "calibration_for", "calibration_tokens"]

CALIBRATION_SEQ_LEN = 512
CALIBRATION_SEQUENCES = 16  # of the shipped text (all its documents), or random ids


def calibration_tokens(source: Path, text_files: tuple[Path, ...] = (),
                       max_tokens: int = MAX_TEXT_TOKENS) -> tuple[np.ndarray, str]:
    """Token ids [sequences, positions] to calibrate `source` on, and where they come from."""
    config = open_checkpoint(source).config
    return choose_tokens(config, TokenSource(
        text_files=tuple(Path(p) for p in text_files), max_tokens=max_tokens,
        seq_len=min(CALIBRATION_SEQ_LEN, config.max_seq_len), batch=CALIBRATION_SEQUENCES))


def calibration_for(scheme: str, source: Path, text_files: tuple[Path, ...] = ()
                    ) -> np.ndarray | None:
    """The calibration token ids `quantize --scheme SCHEME` needs (None for a scheme that does
    not calibrate, which takes no text)."""
    if scheme in SCHEMES and SCHEMES[scheme].calibrated:
        return calibration_tokens(Path(source), tuple(text_files))[0]
    if text_files:
        raise UsageError(f"--text-file calibrates activation scales; --scheme {scheme} has "
                         "none (--scheme nvfp4 does)")
    return None
