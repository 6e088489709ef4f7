"""The CPU quantizer (quant.cpu) against the numpy reference (quant.primitives): the same codes,
scales, zero points, clipped count and max error, bit for bit, for every scheme and method on
the adversarial matrices, wider ones that cross its bands, and dense sources."""

import dataclasses

import numpy as np
import pytest

from converter.layouts.linears import dense_transposed
from converter.tensors import f32_to_bf16_bits
from quant.cpu import NotFinite, quantize_cpu
from quant.primitives import quantize_linear
from quant.schemes import QuantScheme
from tests.test_quant import SCHEMES, adversarial, release_matrix

ALL = SCHEMES + [dataclasses.replace(s, method="mse") for s in SCHEMES]


def cases(rng):
    """The adversarial matrices, a wide one (several mse column bands), a tall one (many row
    bands and scale blocks of 96 rows across 128-row groups), and dense float32 sources."""
    return [
        *adversarial(rng),
        ("wide", release_matrix(rng, 256, 1100, 2)),
        ("tall", release_matrix(rng, 768, 24, 8)),
        ("dense", rng.standard_normal((344, 40)).astype(np.float32)),
        ("dense outlier", np.where(rng.random((256, 16)) < 0.01, 40.0,
                                   rng.standard_normal((256, 16))).astype(np.float32)),
    ]


@pytest.mark.parametrize("scheme", ALL, ids=lambda s: s.label)
def test_cpu_path_is_bit_identical_to_the_reference(scheme):
    rng = np.random.default_rng(scheme.bits * 100 + (scheme.group_size or 0))
    clipped = 0.0
    for name, value in cases(rng):
        with np.errstate(all="ignore"):
            expected, reference = quantize_linear(dense_transposed(value), scheme)
        got, stats = quantize_cpu(value, scheme)
        assert got.shape == expected.shape and got.group_size == expected.group_size, name
        assert np.array_equal(got.packed, expected.packed), name
        assert np.array_equal(got.scale, expected.scale), name
        if scheme.symmetric:
            assert got.zero_point is None and expected.zero_point is None
        else:
            assert np.array_equal(got.zero_point, expected.zero_point), name
        for key in ("max_abs_err", "clipped_pct", "numel"):
            assert stats[key] == reference[key], (name, key)
        assert stats["rel_rms"] == pytest.approx(reference["rel_rms"], rel=1e-6, abs=1e-12), name
        clipped += stats["clipped_pct"]
    if scheme.grid == "compressed-tensors":
        assert clipped > 0  # the path that counts and clips spilling groups ran (its
        # symmetric grid clips: a positive max lands on 7.5 or 127.5, rounded up)
    # (the release grid cannot clip by RTN: its bf16 scale is within 2^-9 of max|w| / qmax)


@pytest.mark.parametrize("method", ["rtn", "mse"])
def test_nan_or_inf_is_refused(method):
    scheme = QuantScheme(4, 128, True, method)
    rng = np.random.default_rng(0)
    scales = rng.uniform(1e-3, 1e-2, (2, 8)).astype(np.float32)
    nan_scale = scales.copy()
    nan_scale[1, 3] = np.nan
    dense = rng.standard_normal((256, 8)).astype(np.float32)
    dense[7, 2] = np.inf
    for value in (release_matrix(rng, 256, 8, 2, scales=nan_scale),
                  release_matrix(rng, 256, 8, 2, scales=np.full((2, 8), 3e38, np.float32)),
                  dense):
        with pytest.raises(NotFinite):
            quantize_cpu(value, scheme)


def test_negative_scales_keep_their_extremes():
    """A release scale may be negative (nothing forbids it): the extremes swap, as the
    reference sees them in the dequantized matrix."""
    rng = np.random.default_rng(5)
    value = release_matrix(rng, 256, 12, 2)
    value = dataclasses.replace(value, scales=f32_to_bf16_bits(
        -rng.uniform(1e-3, 1e-2, (2, 12)).astype(np.float32)))
    for scheme in (QuantScheme(4, 128, False), QuantScheme(8, None)):
        expected, _ = quantize_linear(dense_transposed(value), scheme)
        got, _ = quantize_cpu(value, scheme)
        assert np.array_equal(got.packed, expected.packed)
        assert np.array_equal(got.scale, expected.scale)


def test_mse_search_without_the_kept_float32_copy(monkeypatch):
    """Matrices above MSE_KEEP are dequantized again for every candidate, band by band: the
    same choice as with the copy kept."""
    import quant.cpu

    rng = np.random.default_rng(9)
    value = release_matrix(rng, 344, 300, 8)
    scheme = QuantScheme(4, 32, False, "mse")
    kept, _ = quantize_cpu(value, scheme)
    monkeypatch.setattr(quant.cpu, "MSE_KEEP", 0)
    monkeypatch.setattr(quant.cpu, "MSE_BAND", 32 * 64)  # several column bands
    again, _ = quantize_cpu(value, scheme)
    expected, _ = quantize_linear(dense_transposed(value), scheme)
    for got in (kept, again):
        assert np.array_equal(got.packed, expected.packed)
        assert np.array_equal(got.zero_point, expected.zero_point)
