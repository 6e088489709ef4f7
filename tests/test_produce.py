"""The Producer: output arrays from canonical values, each Linear made once and dropped once
handed out; the core Linears (dense, release int8) against the release's values."""

import threading

import numpy as np
import pytest

from converter.errors import UsageError
from converter.formats import unpack_codes
from converter.layouts import open_checkpoint
from converter.layouts.linears import DenseLinears, ReleaseInt8Linears, convert_linears
from converter.layouts.produce import Producer
from converter.model import GROK1
from converter.model.names import OutputName
from converter.tensors import round_to_bf16


@pytest.fixture(scope="module")
def reader(tiny_ckpt):
    return open_checkpoint(tiny_ckpt)


def find(reader, role, layer):
    return next(s for s in reader.specs if s.role == role and s.layer == layer)


def origin(role, layer, expert, part, names="hpcai"):
    return OutputName(GROK1.scheme(names).tensor(role, layer, expert, part), role, layer,
                      expert, part)


def test_plain_tensors(reader):
    produce = Producer(reader, DenseLinears("f32", GROK1.linear_roles), GROK1.scheme("sglang"))
    router = find(reader, "router", 4)
    got = produce(router, origin("router", 4, None, "weight"))
    np.testing.assert_array_equal(got, np.asarray(reader.read(router)).T)
    norm = find(reader, "post_moe_norm", 7)
    np.testing.assert_array_equal(produce(norm, origin("post_moe_norm", 7, None, "scale")),
                                  reader.read(norm))
    embed = find(reader, "embed", None)
    lm_head = OutputName("lm_head.weight", "embed", None, None, "lm_head")
    np.testing.assert_array_equal(produce(embed, lm_head), reader.read(embed))


def test_dense_bf16_rounds_the_exact_product_once(reader):
    produce = Producer(reader, DenseLinears("bf16", GROK1.linear_roles), GROK1.scheme("hpcai"))
    down = find(reader, "moe_down", 2)
    bits = produce(down, origin("moe_down", 2, 5, "weight"))
    expected = round_to_bf16(reader.read(down).dequantize()[5].T.copy())
    np.testing.assert_array_equal((bits.astype(np.uint32) << 16).view(np.float32), expected)


def test_release_int8_keeps_codes_and_scales(reader):
    linears = ReleaseInt8Linears.for_specs(reader.specs)
    produce = Producer(reader, linears, GROK1.name_schemes["hpcai"])
    out = find(reader, "attn_o", 3)  # G = 8 scale groups along the input
    value = reader.read(out)
    packed = produce(out, origin("attn_o", 3, None, "weight_packed"))
    scale = produce(out, origin("attn_o", 3, None, "weight_scale"))
    k, n = value.weight.shape
    np.testing.assert_array_equal(unpack_codes(packed, 8, k), np.asarray(value.weight).T)
    group = linears.formats["attn_o"].group_size
    np.testing.assert_array_equal(scale[:, (np.arange(k) // group)],
                                  np.asarray(value.scales)[np.arange(k) // (k // 8)].T)
    assert produce._pending  # one part still to hand out: the Linear is kept
    assert produce(out, origin("attn_o", 3, None, "weight_shape")).tolist() == [n, k]
    assert produce._pending == {}  # all three parts handed out: nothing kept


class Counting:
    """A Linears that counts how often it is asked to make a Linear."""

    def __init__(self, inner, fail=False):
        self.inner, self.fail, self.calls = inner, fail, 0
        self.formats, self.label = inner.formats, inner.label
        self.lock = threading.Lock()

    def make(self, spec, expert, value):
        with self.lock:
            self.calls += 1
        if self.fail:
            raise UsageError("boom")
        parts, _ = self.inner.make(spec, expert, value)
        return parts, {"rel_rms": 0.0}

    def check_kept(self, spec, array):
        return None


def test_each_linear_is_made_once_by_concurrent_threads(reader):
    # every part of four experts' Linears asked for at once, each part once (as writers do)
    linears = Counting(ReleaseInt8Linears.for_specs(reader.specs))
    produce = Producer(reader, linears, GROK1.name_schemes["hpcai"])
    gate = find(reader, "moe_gate", 1)
    asks = [(e, p) for e in (3, 4, 5, 6) for p in ("weight_packed", "weight_scale",
                                                  "weight_shape")]
    barrier = threading.Barrier(len(asks))

    def ask(expert, part):
        barrier.wait()
        return produce(gate, origin("moe_gate", 1, expert, part))

    threads = [threading.Thread(target=ask, args=a) for a in asks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert linears.calls == 4
    assert produce.summary() == {"stats": {
        f"model.layers.1.moe_block.experts.{e}.linear": {"rel_rms": 0.0} for e in (3, 4, 5, 6)}}


def test_a_failed_linear_fails_every_part_and_is_not_kept(reader):
    produce = Producer(reader, Counting(convert_linears("int8", reader.specs), fail=True),
                       GROK1.name_schemes["hpcai"])
    query = find(reader, "attn_q", 0)
    for part in ("weight_packed", "weight_scale"):
        with pytest.raises(UsageError, match="boom"):
            produce(query, origin("attn_q", 0, None, part))
    assert produce._pending == {}


@pytest.mark.parametrize("shape, groups", [((344, 40), 8), ((344, 1024), 8), ((96, 2048), 1),
                                           ((1, 5), 1)])
def test_band_by_band_transposes_match_the_plain_ones(shape, groups):
    """dense_transposed / bf16_transposed dequantize in bands of rows that cross the release's
    scale blocks (43 rows here) and transpose tile by tile, with both tile shapes (rows 2 KiB
    apart or not): the same arrays as dequantizing whole and transposing."""
    from converter.layouts.linears import bf16_transposed, dense_transposed
    from converter.tensors import QuantizedWeight8bit, f32_to_bf16_bits, transposed

    rng = np.random.default_rng(sum(shape))
    value = QuantizedWeight8bit(rng.integers(-127, 128, shape).astype(np.int8), f32_to_bf16_bits(
        rng.uniform(1e-3, 1e-2, (groups, shape[1])).astype(np.float32)))
    whole = value.dequantize()
    np.testing.assert_array_equal(dense_transposed(value), whole.T)
    np.testing.assert_array_equal(bf16_transposed(value), f32_to_bf16_bits(whole.T))
    np.testing.assert_array_equal(dense_transposed(whole), whole.T)
    codes = np.asarray(value.weight)
    np.testing.assert_array_equal(transposed(codes), codes.T)
