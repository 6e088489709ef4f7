"""Our pack-quantized output, decompressed by the compressed-tensors package itself."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from converter.files.shards import SafetensorsReader
from converter.layouts import open_checkpoint
from converter.tensors import bf16_bits_to_f32
from grok1.cli import main

compressed_tensors = pytest.importorskip("compressed_tensors")


def torch_tensor(reader, name):
    array = reader.get(name)
    if reader.dtype(name) == "BF16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


@pytest.mark.parametrize("args", [["convert", "--dtype", "int8"],
                                  ["quantize", "--scheme", "int4"],
                                  ["quantize", "--scheme", "int4", "--asymmetric"],
                                  ["quantize", "--scheme", "int8"]], ids=" ".join)
def test_compressed_tensors_decompresses_our_output(upstream, tmp_path, args):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    command, *options = args
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [command, str(upstream), str(out), "--quiet", *options])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    QuantizationConfig.model_validate(config)
    ours = open_checkpoint(out)
    reader = SafetensorsReader(out / "model.safetensors")
    spec = next(s for s in ours.specs if s.layer == 2 and s.role == "moe_down")
    base = "model.layers.2.moe_block.experts.5.linear_1"
    group = next(g for g in config["config_groups"].values()
                 if g["targets"] == ["Linear"] or any("linear_1" in t for t in g["targets"]))
    scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"])
    state = {part: torch_tensor(reader, f"{base}.{part}") for part in
             ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")
             if f"{base}.{part}" in reader.entries}
    theirs = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
    mine = ours.read_expert(spec, 5)
    mine = mine.dequantize() if hasattr(mine, "dequantize") else mine
    np.testing.assert_array_equal(theirs.float().numpy(),
                                  bf16_bits_to_f32(np.asarray(
                                      torch.from_numpy(np.ascontiguousarray(mine.T))
                                      .bfloat16().view(torch.int16).numpy()).view(np.uint16))
                                  if theirs.dtype == torch.bfloat16 else mine.T)
