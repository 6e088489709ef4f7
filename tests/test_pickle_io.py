"""The safe reader against an independent decode, and the byte-exact writer."""

import hashlib
import pickle
import pickletools
import shutil

import numpy as np
import pytest

from converter.files.pickle_reader import load_leaf
from converter.files.pickle_writer import ArrayMeta, encode_leaf
from converter.generate import generate_checkpoint
from converter.layouts.xai import XaiCheckpoint, write_xai
from converter.model.config import Grok1Config
from converter.tensors import QuantizedWeight8bit, bf16_bits_to_f32


def payloads_by_genops(path):
    """Independent decode: the raw bytes arguments of every BINBYTES opcode, in order."""
    data = path.read_bytes()
    return [arg for op, arg, _ in pickletools.genops(data)
            if op.name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8") and arg != b"b"]


def test_reader_yields_exactly_the_pickled_arrays(upstream):
    checkpoint = XaiCheckpoint.open(upstream)
    seen = 0
    for spec, value in checkpoint:
        raw = payloads_by_genops(checkpoint.path_of(spec))
        if spec.quantized:
            codes = np.frombuffer(raw[0], np.int8).reshape(spec.shape)
            scales = np.frombuffer(raw[1], np.uint16).reshape(spec.scales_shape)
            np.testing.assert_array_equal(value.weight, codes)
            np.testing.assert_array_equal(value.scales, scales)
            # dequantize by an explicit loop over scale groups, not by our reshape trick
            k = spec.shape[-2]
            block = k // spec.scale_groups
            expected = np.empty(spec.shape, np.float32)
            for g in range(spec.scale_groups):
                rows = slice(g * block, (g + 1) * block)
                expected[..., rows, :] = codes[..., rows, :].astype(np.float32) * \
                    bf16_bits_to_f32(scales[..., g:g + 1, :])
            np.testing.assert_array_equal(value.dequantize(), expected)
        else:
            np.testing.assert_array_equal(value, np.frombuffer(raw[0], np.float32).reshape(
                spec.shape))
        seen += 1
    assert seen == len(checkpoint.specs) == 2 + 12 * checkpoint.config.layers


def test_layer_10_comes_from_file_26(upstream):
    checkpoint = XaiCheckpoint.open(upstream)
    spec = next(s for s in checkpoint.specs if s.layer == 10 and s.role == "moe_gate")
    assert checkpoint.path_of(spec).name == "tensor00026_000"
    value = checkpoint.read(spec)
    raw = payloads_by_genops(upstream / "ckpt-0" / "tensor00026_000")
    assert value.weight.tobytes() == raw[0]


def test_reader_maps_without_copying(upstream):
    value = load_leaf(upstream / "ckpt-0" / "tensor00002_000")
    assert isinstance(value, QuantizedWeight8bit)
    for array in (value.weight, value.scales):
        assert not array.flags.owndata and not array.flags.writeable


def test_fixture_round_trips_byte_for_byte(upstream, tmp_path):
    checkpoint = XaiCheckpoint.open(upstream)
    write_xai(tmp_path, checkpoint.config, iter(checkpoint))
    written = sorted((tmp_path / "ckpt-0").iterdir())
    assert len(written) == 146
    for path in written:
        assert path.read_bytes() == (upstream / "ckpt-0" / path.name).read_bytes(), path.name


def test_generated_checkpoint_round_trips_byte_for_byte(tiny_ckpt, tmp_path):
    checkpoint = XaiCheckpoint.open(tiny_ckpt)
    write_xai(tmp_path, checkpoint.config, iter(checkpoint))
    for path in sorted((tiny_ckpt / "ckpt-0").iterdir()):
        assert path.read_bytes() == (tmp_path / "ckpt-0" / path.name).read_bytes()
    assert not list(tmp_path.rglob("*.incomplete"))


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((folder / "ckpt-0").iterdir())}


def test_generation_is_deterministic(tmp_path):
    config = Grok1Config.preset("tiny", layers=2)
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate_checkpoint(tmp_path / name, config, seed=seed, quiet=True)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_generated_codes_use_absmax_scales(tiny_ckpt):
    checkpoint = XaiCheckpoint.open(tiny_ckpt)
    for spec, value in checkpoint:
        if spec.quantized:
            assert np.abs(value.weight).max() == 127
            assert (bf16_bits_to_f32(value.scales) > 0).all()


@pytest.fixture
def fake_quantized_class(monkeypatch):
    import dataclasses

    import __main__

    @dataclasses.dataclass
    class QuantizedWeight8bit:
        weight: np.ndarray
        scales: np.ndarray

    QuantizedWeight8bit.__module__ = "__main__"
    QuantizedWeight8bit.__qualname__ = "QuantizedWeight8bit"
    monkeypatch.setattr(__main__, "QuantizedWeight8bit", QuantizedWeight8bit, raising=False)
    return QuantizedWeight8bit


@pytest.mark.parametrize("n", [0, 1, 255, 256, 16385, 40000, 65535, 65536, 70000])
def test_emitter_matches_cpython_pickler_framing(n, fake_quantized_class):
    """Our opcode emitter against CPython's own pickler, across the 64 KiB frame boundary."""
    rng = np.random.default_rng(n)
    for shape in [(n,), (1, 2, 3, n)]:
        for dtype, name in ((np.float32, "f4"), (np.int8, "i1")):
            array = (rng.standard_normal(shape) * 50).astype(dtype)
            parts = encode_leaf([ArrayMeta(name, shape)], quantized=False,
                                reconstruct_module="numpy._core.multiarray")
            ours = b"".join(p if isinstance(p, bytes) else array.tobytes() for p in parts)
            assert ours == pickle.dumps(array, protocol=4)
    weight = rng.integers(-127, 128, (2, max(n, 1)), dtype=np.int8)
    scales = rng.standard_normal((1, max(n // 3, 1))).astype(np.float32)
    parts = encode_leaf([ArrayMeta("i1", weight.shape), ArrayMeta("f4", scales.shape)],
                        quantized=True, reconstruct_module="numpy._core.multiarray")
    payloads = [weight.tobytes(), scales.tobytes()]
    ours = b"".join(p if isinstance(p, bytes) else payloads[p.index] for p in parts)
    assert ours == pickle.dumps(fake_quantized_class(weight, scales), protocol=4)


def test_failed_write_leaves_nothing(tiny_ckpt, tmp_path):
    from converter.errors import ShapeMismatchError
    from converter.layouts.xai import write_leaf
    checkpoint = XaiCheckpoint.open(tiny_ckpt)
    spec = checkpoint.specs[1]
    with pytest.raises(ShapeMismatchError, match="payload 0 has 8 bytes"):
        write_leaf(tmp_path / spec.file_name, spec, [[np.zeros(2, np.float32)]])
    assert list(tmp_path.iterdir()) == []


def test_legacy_ckpt_folder_and_bare_tensor_folder(tiny_ckpt, tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_ckpt / "ckpt-0", legacy / "ckpt")
    shutil.copy(tiny_ckpt / "config.json", legacy)
    assert XaiCheckpoint.open(legacy).tensor_dir == legacy / "ckpt"
    bare = XaiCheckpoint.open(tiny_ckpt / "ckpt-0")
    assert bare.config == Grok1Config.preset("tiny")
