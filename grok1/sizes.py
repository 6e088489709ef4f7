"""The real Grok-1's weight bytes in each output kind, from the plan of its tensors (nothing is
read or written): what the serving table says each output needs."""

from __future__ import annotations

from converter.layouts.hf import plan_outputs
from converter.layouts.linears import convert_linears
from converter.model import GROK1
from converter.model.config import Grok1Config
from quant.registry import SCHEMES as QUANT_SCHEMES
from quant.schemes import SchemeOptions

__all__ = ["real_model_sizes"]


def real_model_sizes() -> dict[str, int]:
    """Bytes of the real model's hf output by weights (f32, bf16, int8, int4, ...)."""
    specs = GROK1.build_spec(Grok1Config())
    linears = [convert_linears(dtype, specs) for dtype in ("f32", "bf16")]
    for entry in QUANT_SCHEMES.values():
        linears.append(entry.linears(specs))
        if entry.integer:
            linears.append(entry.linears(specs, SchemeOptions(symmetric=False)))
    sizes = {}
    for made in linears:
        outputs = plan_outputs(specs, GROK1.scheme(), made.formats)
        sizes[made.formats["moe_gate"].label()] = sum(o.entry.nbytes for o in outputs)
    return sizes
