"""The pictures: valid PNGs whose pixels say what the numbers say (a flagged layer is marked
in red where it lies; every expert Linear has a cell colored by its error)."""

import struct
import zlib

import numpy as np
from click.testing import CliRunner

from converter.report.plots import BAND, RED, expert_heatmap, layer_error_plot, png
from grok1.cli import main
from tests.conftest import bad_input


def pixels(data: bytes) -> np.ndarray:
    """Decode the PNGs `png` writes (8-bit RGB, filter 0) back to [height, width, 3]."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        length, = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == (
            zlib.crc32(kind + body) & 0xFFFFFFFF)
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 3)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(height, width, 3)


def test_png_round_trips():
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    assert np.array_equal(pixels(png(image)), image)


def test_a_layer_over_the_limit_is_marked_where_it_lies():
    rows = [{"layer": i, "attention": 0.002, "moe": 0.059 if i == 3 else 0.003,
             "hidden": 0.002} for i in range(8)]
    band = np.array(BAND, np.uint8)
    image = pixels(layer_error_plot(rows, 0.05, "test"))
    columns = np.flatnonzero((image == band).all(axis=-1).any(axis=0))
    left, right = 130, 960
    centre = left + (right - left) * 3.5 / 8
    assert columns.size and abs(columns.mean() - centre) < 4
    assert ((image == np.array(RED, np.uint8)).all(axis=-1)).any()  # the limit line
    calm = pixels(layer_error_plot([{**r, "moe": 0.003} for r in rows], 0.05, "test"))
    assert not (calm == band).all(axis=-1).any()


def test_heatmap_colors_each_expert_linear_by_its_error():
    errors = {f"model.layers.{layer}.moe_block.experts.{expert}.{name}": 0.01 * (1 + expert)
              for layer in range(2) for expert in range(4)
              for name in ("linear", "linear_v", "linear_1")}
    errors["model.layers.0.attn.q_proj"] = 9.0  # not an expert: not in the map, not its scale
    image = pixels(expert_heatmap(errors, "test"))
    row = image[90 + 20]  # inside layer 0's cells
    colors = {tuple(row[x]) for x in range(90, 90 + 4 * 40, 40)}
    assert len(colors) == 4  # four experts, four errors, four colors
    assert expert_heatmap({"model.layers.0.attn.q_proj": 1.0}, "none") is None


def test_quantize_draws_its_heatmap_and_verify_its_layers(small_ckpt, tmp_path):
    out = tmp_path / "int8"
    assert CliRunner().invoke(main, ["quantize", str(small_ckpt), str(out), "--scheme", "int8",
                                     "--quiet"]).exit_code == 0
    assert pixels((out / "quantization_errors.png").read_bytes()).shape[2] == 3
    result = CliRunner().invoke(main, ["verify", str(small_ckpt), str(out), "--per-layer",
                                       "--seq-len", "16", "--batch", "2", "--plot",
                                       str(tmp_path / "layers.png")])
    assert result.exit_code == 0, result.output
    assert pixels((tmp_path / "layers.png").read_bytes()).shape == (590, 1000, 3)
    assert "add --per-layer" in bad_input("verify", small_ckpt, out, "--plot",
                                          tmp_path / "x.png")
