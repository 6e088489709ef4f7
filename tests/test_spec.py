import csv
import math

import pytest

from converter.errors import ConfigMismatchError, MalformedFileError, UsageError
from converter.model import GROK1
from converter.model.config import PRESETS, Grok1Config, default_ffn_size
from tests.conftest import REAL_INDEX


def test_real_config_reproduces_the_release_index_row_for_row():
    with open(REAL_INDEX) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    specs = GROK1.build_spec(Grok1Config())
    assert len(specs) == len(rows) == 770
    for spec, row in zip(specs, rows, strict=True):
        assert (str(spec.file_index), spec.file_name, spec.name, str(spec.shape), spec.stored_as,
                str(spec.scales_shape), str(spec.payload_bytes)) == (
            row["index"], row["file"], row["param_path"], row["shape"], row["stored_as"],
            row["scales_shape"], row["payload_bytes"])


def test_real_parameter_count_and_size():
    specs = GROK1.build_spec(Grok1Config())
    assert sum(s.numel for s in specs) == 315_684_820_992
    assert abs(sum(s.payload_bytes for s in specs) / 1e9 - 318.24) < 0.01


def test_layers_are_in_lexicographic_file_order():
    specs = GROK1.build_spec(Grok1Config.preset("tiny"))
    layer_of_file = [s.layer for s in specs[2::12]]
    assert layer_of_file == [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    layer10_gate = next(s for s in specs if s.layer == 10 and s.role == "moe_gate")
    assert layer10_gate.file_index == 26
    within = [s.name.split("decoder_layer_0/")[1] for s in specs if s.layer == 0]
    assert within == ["moe/linear/w", "moe/linear_1/w", "moe/linear_v/w",
                      "multi_head_attention/key/w", "multi_head_attention/linear/w",
                      "multi_head_attention/query/w", "multi_head_attention/value/w",
                      "rms_norm/scale", "rms_norm_1/scale", "rms_norm_2/scale",
                      "rms_norm_3/scale", "router/w"]


def test_scale_groups_only_on_the_row_parallel_matrices():
    groups = {s.role: s.scale_groups for s in GROK1.build_spec(Grok1Config()) if s.quantized}
    assert groups == {"moe_gate": 1, "moe_down": 8, "moe_up": 1, "attn_k": 1, "attn_o": 8,
                      "attn_q": 1, "attn_v": 1}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_run_on_the_original_code(name):
    c = Grok1Config.preset(name)
    assert (c.experts, c.topk) == (8, 2)
    for dim in (c.q_heads, c.kv_heads, c.emb, c.ffn_size):
        assert dim % 8 == 0
    assert c.ffn_size == default_ffn_size(c.emb)
    assert math.isclose(c.emb_mult, math.sqrt(c.emb))
    assert math.isclose(c.attn_mult, 1 / math.sqrt(c.key_size))


def test_preset_sizes():
    size = {n: sum(s.payload_bytes for s in GROK1.build_spec(Grok1Config.preset(n)))
            for n in PRESETS}
    assert size["tiny"] < 10e6
    assert 30e6 < size["small"] < 70e6
    assert 1.5e9 < size["bench"] < 2.5e9 and Grok1Config.preset("bench").layers >= 12
    one_layer = sum(s.payload_bytes for s in GROK1.build_spec(Grok1Config.preset("real", layers=1)))
    assert abs(one_layer / 1e9 - 8.1) < 0.1


def test_ffn_rule_matches_upstream():
    assert default_ffn_size(6144) == 32768
    assert default_ffn_size(64) == 344


def test_invalid_configs_are_refused():
    with pytest.raises(UsageError, match="kv_heads"):
        Grok1Config(q_heads=12, kv_heads=8)
    with pytest.raises(UsageError, match="unknown preset"):
        Grok1Config.preset("huge")


def test_sidecar_typos_and_contradictions_are_errors():
    with pytest.raises(MalformedFileError, match="unknown config keys"):
        Grok1Config.from_dict({"layer": 2})
    with pytest.raises(ConfigMismatchError, match="widening_factor"):
        Grok1Config.from_dict({"emb": 64, "ffn_size": 512, "widening_factor": 8.0,
                               "key_size": 16, "q_heads": 16})


def test_upstream_sidecar_loads(upstream):
    from converter.model.config import load_sidecar
    c = load_sidecar(upstream)
    assert c == Grok1Config.preset("tiny")


def test_stored_orientation_and_scale_blocks_have_one_definition():
    specs = {(s.role, s.layer): s for s in GROK1.build_spec(Grok1Config())}
    attn_o, embed, router = specs[("attn_o", 0)], specs[("embed", None)], specs[("router", 0)]
    assert attn_o.shape == (6144, 6144) and attn_o.rows_per_scale_group == 6144 // 8
    assert specs[("moe_down", 0)].out_in_shape == (8, 6144, 32768)
    assert router.out_in_shape == (8, 6144) and embed.out_in_shape == embed.shape
