"""The Linear storage formats as registered classes: each declares its parts, reads its own
config group back, and config.json's quantization_config round-trips through the registry."""

import pytest

from converter.errors import MalformedFileError
from converter.formats import (
    FORMATS,
    Dense,
    FloatQuantized,
    MXFP4PackQuantized,
    NVFP4PackQuantized,
    PackQuantized,
    config_groups,
    formats_from_quantization,
    ignored_modules,
    quantization_config,
)
from converter.model import GROK1
from converter.model.spec import TensorSpec

QUANTIZED = [PackQuantized(8), PackQuantized(8, 32), PackQuantized(4, 128),
             PackQuantized(4, 128, symmetric=False), FloatQuantized(), FloatQuantized((128, 128)),
             NVFP4PackQuantized(), NVFP4PackQuantized(activations=True), MXFP4PackQuantized()]

# one expert's Linear of 256 inputs and 64 outputs
SPEC = TensorSpec("layer/linear", "moe_gate", 0, (8, 256, 64), True, 1, 0, GROK1.role["moe_gate"])


def test_every_quantized_format_is_registered_under_its_own_name():
    assert {type(f) for f in QUANTIZED} == set(FORMATS.values())
    assert all(FORMATS[cls.name] is cls for cls in FORMATS.values())


@pytest.mark.parametrize("fmt", QUANTIZED, ids=repr)
def test_a_format_reads_back_its_own_group(fmt):
    group = fmt.group()
    assert group["format"] == fmt.name
    assert [cls for cls in FORMATS.values() if cls.recognises(group)] == [type(fmt)]
    assert type(fmt).from_config_group("g", group, "config.json") == fmt


@pytest.mark.parametrize(("weights", "fmt"), [
    ({"num_bits": 4, "type": "float", "group_size": 16, "strategy": "tensor_group"},
     NVFP4PackQuantized()),
    ({"num_bits": 4, "type": "float", "group_size": 32, "strategy": "group"},
     MXFP4PackQuantized()),
    ({"num_bits": 8, "type": "float", "strategy": "channel"}, FloatQuantized()),
    ({"num_bits": 4, "type": "int", "group_size": 128, "strategy": "group"},
     PackQuantized(4, 128))], ids=repr)
def test_an_unnamed_group_is_read_by_its_weights(weights, fmt):
    group = {"targets": ["Linear"], "weights": weights}
    config = {"quant_method": "compressed-tensors", "config_groups": {"group_0": group}}
    scheme = GROK1.name_schemes["hpcai"]
    assert set(formats_from_quantization(config, scheme, "BF16").values()) == {fmt}


@pytest.mark.parametrize("names", list(GROK1.name_schemes))
@pytest.mark.parametrize("experts", QUANTIZED, ids=repr)
def test_quantization_config_round_trips_mixed_formats(names, experts):
    scheme = GROK1.name_schemes[names]
    formats = dict.fromkeys(GROK1.linear_roles, experts)
    formats["attn_o"] = PackQuantized(8, 32)
    formats["attn_q"] = FloatQuantized((128, 128))
    config = quantization_config(config_groups(scheme, formats), ignored_modules(scheme))
    assert formats_from_quantization(config, scheme, "BF16") == formats


def test_without_quantization_every_linear_is_dense():
    formats = formats_from_quantization(None, GROK1.name_schemes["hpcai"], "F32")
    assert set(formats.values()) == {Dense("F32")}
    assert Dense("F32").compute_dtype == "F32" and not Dense("F32").quantized


@pytest.mark.parametrize(("fmt", "parts"), [
    (Dense("BF16"), {"weight": ("BF16", (64, 256))}),
    (PackQuantized(4, 128), {"weight_packed": ("I32", (64, 32)),
                             "weight_scale": ("BF16", (64, 2)), "weight_shape": ("I64", (2,))}),
    (PackQuantized(8, None, symmetric=False), {
        "weight_packed": ("I32", (64, 64)), "weight_scale": ("BF16", (64, 1)),
        "weight_shape": ("I64", (2,)), "weight_zero_point": ("I32", (16, 1))}),
    (FloatQuantized(), {"weight": ("F8_E4M3", (64, 256)), "weight_scale": ("F32", (64, 1))}),
    (FloatQuantized((32, 128)), {"weight": ("F8_E4M3", (64, 256)),
                                 "weight_scale": ("F32", (2, 2))}),
    (NVFP4PackQuantized(), {"weight_packed": ("U8", (64, 128)),
                            "weight_scale": ("F8_E4M3", (64, 16)),
                            "weight_global_scale": ("F32", (1,))}),
    (NVFP4PackQuantized(activations=True), {
        "weight_packed": ("U8", (64, 128)), "weight_scale": ("F8_E4M3", (64, 16)),
        "weight_global_scale": ("F32", (1,)), "input_global_scale": ("F32", (1,))}),
    (MXFP4PackQuantized(), {"weight_packed": ("U8", (64, 128)),
                            "weight_scale": ("U8", (64, 8))}),
], ids=repr)
def test_each_format_declares_its_parts(fmt, parts):
    assert {name: fmt.part(name, SPEC) for name in fmt.parts()} == parts


def test_quantized_formats_compute_in_bf16():
    assert {f.compute_dtype for f in QUANTIZED} == {"BF16"}


def test_a_part_a_format_does_not_have_is_refused():
    with pytest.raises(MalformedFileError, match="unknown pack-quantized Linear part 'weight'"):
        PackQuantized(4, 128).part("weight", SPEC)


def test_a_group_in_no_known_format_is_one_line_naming_the_file():
    config = quantization_config([{"targets": ["Linear"], "weights": {"type": "mx"},
                                   "format": "mystery-quantized"}], [])
    config["format"] = "pack-quantized"
    with pytest.raises(MalformedFileError, match=r"^cfg/config.json: quantization config group "
                       r"'group_0' is in no supported format \(format 'mystery-quantized'"):
        formats_from_quantization(config, GROK1.name_schemes["hpcai"], "BF16", "cfg/config.json")


def test_an_fp8_block_larger_than_its_linear_is_refused_before_allocating():
    with pytest.raises(MalformedFileError, match=r"larger than the \[out, in\] = \[64, 256\]"):
        FloatQuantized((1, 4194304)).check(SPEC, "config.json")
    Dense().check(SPEC, "config.json")

