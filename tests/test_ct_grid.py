"""Our integer quantization is compressed-tensors' own: on bf16 weights, the reference's scales
and zero points are those of compressed-tensors' `calculate_qparams`, bit for bit, and its codes
those of compressed-tensors' `quantize` (its torch path, what llm-compressor runs on a CPU) under
`arithmetic="bf16"`, and those of its Triton kernel's arithmetic (w / scale in float32, plus the
zero point, clamped, rounded half to even; read in `forward_helpers._quantize_kernel` and
written here in torch: that kernel needs a GPU) under the default "f32"."""

import numpy as np
import pytest
import torch

from converter.tensors import bf16_bits_to_f32, f32_to_bf16_bits
from quant.primitives import quantize_linear
from quant.schemes import QuantScheme

pytest.importorskip("compressed_tensors")

SCHEMES = [QuantScheme(bits, group, symmetric, arithmetic=arithmetic)
           for bits, group, symmetric in [(4, 128, True), (8, None, True), (4, 32, True),
                                          (4, 128, False), (8, 64, False), (8, None, False)]
           for arithmetic in ("f32", "bf16")]


def ct_quantize(weights: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, ...]:
    """(codes int8 [out, in], scales [out, groups], zero points [out, groups]) as
    compressed-tensors computes them for a bf16 Linear with min/max observation (the codes by
    its torch path, or by its Triton kernel's float32 arithmetic)."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    out, cols = weights.shape
    size = scheme.group_size or cols
    args = QuantizationArgs(num_bits=scheme.bits, type="int", symmetric=scheme.symmetric,
                            strategy="group" if scheme.group_size else "channel",
                            group_size=scheme.group_size)
    grouped = weights.view(out, cols // size, size)
    scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
    if scheme.arithmetic == "bf16":
        codes = quantize(weights, scale, zero, args, dtype=torch.int8)
    else:
        quotient = grouped.float() / scale.float()[..., None] + zero.float()[..., None]
        codes = torch.round(torch.clamp(quotient, scheme.qmin, scheme.qmax))
        codes = codes.view(out, cols).to(torch.int8)
    return codes, scale, zero


def bf16_matrix(rng: np.random.Generator, out: int, cols: int) -> np.ndarray:
    """float32 values that are exact bf16, with the cases that catch a wrong grid: an all-zero
    group, one-sign groups, ties of the quotient, outliers, a range too small for a scale."""
    x = rng.standard_normal((out, cols)).astype(np.float32) * np.float32(0.02)
    x[0, :] = 0
    x[1, :] = np.abs(x[1, :])
    x[2, :] = -np.abs(x[2, :])
    x[3, ::5] *= 40
    x[4, :] = np.float32(0.015625) * (np.arange(cols) % 16 - 8)  # quotients on half-way points
    x[5, :] = 0
    x[5, ::7] = -np.float32(2.0**-133)  # bf16's smallest: (max - min) / 15 rounds to a zero scale
    return bf16_bits_to_f32(f32_to_bf16_bits(x))


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_codes_scales_and_zero_points_are_compressed_tensors(scheme):
    rng = np.random.default_rng(scheme.bits + (scheme.group_size or 0))
    x = bf16_matrix(rng, 24, 256)
    packed, _ = quantize_linear(x, scheme)
    codes, scale, zero = ct_quantize(torch.from_numpy(x).to(torch.bfloat16), scheme)
    assert np.array_equal(packed.scale, scale.view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(packed.zero_points(), zero.numpy().astype(np.int8))
    assert np.array_equal(packed.codes(), codes.numpy())


def test_the_two_arithmetics_give_different_int8_codes():
    """Each arithmetic is compared with its own rule: int8 quotients above 64 hold only halves
    in bf16, so the two cannot agree on a normal matrix."""
    x = bf16_matrix(np.random.default_rng(1), 24, 256)
    f32, _ = quantize_linear(x, QuantScheme(8, None))
    bf16, _ = quantize_linear(x, QuantScheme(8, None, arithmetic="bf16"))
    assert np.array_equal(f32.scale, bf16.scale)
    assert not np.array_equal(f32.codes(), bf16.codes())


def test_the_comparison_sees_a_grid_of_another_rule():
    """The old grid (scale amax / 7, codes from -7) must not pass for compressed-tensors'."""
    rng = np.random.default_rng(0)
    x = bf16_matrix(rng, 24, 256)
    codes, scale, _ = ct_quantize(torch.from_numpy(x).to(torch.bfloat16), QuantScheme(4, 128))
    other = f32_to_bf16_bits(np.abs(x).reshape(24, 2, 128).max(-1) / np.float32(7))
    assert not np.array_equal(other, scale.view(torch.int16).numpy().view(np.uint16))
    assert codes.min() == -8  # the negative end of the grid is used
