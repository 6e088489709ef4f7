"""The model as a description: Grok-1's `Architecture` is complete and self-consistent, its
config tables read back what they write, it travels to worker processes by name, and a second
architecture runs through a layout with nothing but its own description."""

import dataclasses
import json
import pickle

import numpy as np
import pytest

from converter.convert import convert
from converter.forward.drive import torch_logits
from converter.layouts import open_checkpoint
from converter.layouts.base import TargetOptions
from converter.layouts.hf import config_from_hf
from converter.model import ARCHITECTURES, GROK1, architecture
from converter.model.architecture import Architecture
from converter.model.config import PRESETS, Grok1Config
from tests.conftest import bad_input

# a sibling declared by its description alone: Grok-1's tree under another name, with its own
# llama.cpp architecture name and tensor names (as a new model family would have)
SIBLING = Architecture(
    name="grok-sibling", title="Grok sibling", config_type=Grok1Config, roles=GROK1.roles,
    linear_roles=GROK1.linear_roles, name_schemes=GROK1.name_schemes,
    default_scheme=GROK1.default_scheme, hf_config=GROK1.hf_config,
    gguf=dataclasses.replace(GROK1.gguf, arch="groksib", names={
        role: f"sib_{name}" for role, name in GROK1.gguf.names.items()},
        config=dataclasses.replace(GROK1.gguf.config, prefix="groksib.")),
    forward="grok-1")


def test_the_registry_and_grok1s_tables_are_complete():
    assert ARCHITECTURES["grok-1"] is GROK1 is architecture("grok-1")
    roles = {r.role for r in GROK1.roles}
    for table in (*(s.modules for s in GROK1.name_schemes.values()), GROK1.gguf.names):
        assert set(table) == roles
    assert set(GROK1.linear_roles) == {r.role for r in GROK1.roles if r.linear}
    assert GROK1.expert_roles == ("moe_gate", "moe_up", "moe_down")
    with pytest.raises(Exception, match="unknown architecture"):
        architecture("grok-9")


def test_a_description_missing_a_name_or_declared_twice_is_refused():
    names = dict(GROK1.gguf.names)
    del names["router"]
    with pytest.raises(ValueError, match="name table covers"):
        dataclasses.replace(GROK1, name="grok-broken",
                            gguf=dataclasses.replace(GROK1.gguf, names=names))
    assert "grok-broken" not in ARCHITECTURES
    with pytest.raises(ValueError, match="declared twice"):
        dataclasses.replace(GROK1)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_config_tables_read_back_what_they_write(preset):
    config = Grok1Config.preset(preset)
    for table in (GROK1.hf_config, GROK1.gguf.config):
        written = table.write(config, {"model_type": "grok-1", "auto_map": {},
                                       "tie_word_embeddings": True,
                                       "torch_dtype": "bfloat16"})
        carried = {k.field for k in table.keys if k.field}
        read = table.read(written)
        assert {f: read[f] for f in carried} == {f: getattr(config, f) for f in carried}


def test_a_foreign_config_json_takes_each_field_from_its_preferred_key():
    real = Grok1Config()
    data = GROK1.hf_config.write(real, {"model_type": "grok-1", "auto_map": {},
                                        "tie_word_embeddings": True,
                                        "torch_dtype": "bfloat16"})
    assert config_from_hf(GROK1, data, "config.json") == real
    hpcai = {k: v for k, v in data.items() if k not in ("attention_multiplier", "head_dim",
                                                        "num_local_experts")}
    hpcai["attn_output_multiplier"] = 0.25  # hpcai's port keeps the multiplier here
    hpcai["num_experts"] = 4
    read = config_from_hf(GROK1, hpcai, "config.json")
    assert (read.attn_mult, read.experts, read.key_size) == (0.25, 4, 6144 // 48)
    for unset in (None, 0):  # a null or zero head_dim is derived, as transformers does
        assert config_from_hf(GROK1, {**data, "head_dim": unset}, "c.json").key_size == 128
    del hpcai["num_key_value_heads"]
    with pytest.raises(Exception, match="missing key 'num_key_value_heads'"):
        config_from_hf(GROK1, hpcai, "config.json")


def test_architectures_and_specs_travel_to_workers_by_name(tiny_ckpt):
    reader = open_checkpoint(tiny_ckpt)
    assert pickle.loads(pickle.dumps(GROK1)) is GROK1
    spec = pickle.loads(pickle.dumps(reader.specs[3]))
    assert spec == reader.specs[3] and spec.param == reader.specs[3].param


def test_every_layout_reader_carries_its_architecture(small_ckpt, tmp_path):
    convert(small_ckpt, tmp_path / "hf", to="hf", options=TargetOptions(dtype="f32"), quiet=True)
    convert(small_ckpt, tmp_path / "gguf", to="gguf", options=TargetOptions(dtype="f32"),
            quiet=True)
    for path in (small_ckpt, tmp_path / "hf", tmp_path / "gguf"):
        assert open_checkpoint(path).architecture is GROK1


def test_a_second_architecture_runs_through_gguf_by_its_description(small_ckpt, tmp_path):
    """Its GGUF carries its own architecture and tensor names, reads back as it, and gives
    the source's logits through the forward it names."""
    from gguf import GGUFReader

    reader = open_checkpoint(small_ckpt)
    reader.architecture = SIBLING
    convert(small_ckpt, tmp_path / "g", to="gguf", options=TargetOptions(dtype="f32"),
            reader=reader, workers=1, quiet=True)
    (path,) = (tmp_path / "g").glob("*.gguf")
    assert path.name.startswith("grok-sibling-")
    theirs = GGUFReader(path)
    arch = theirs.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "groksib"
    assert "blk.0.sib_attn_q.weight" in {t.name for t in theirs.tensors}
    assert any(name.startswith("groksib.") for name in theirs.fields)
    back = open_checkpoint(tmp_path / "g")
    assert back.architecture is SIBLING
    tokens = np.array([[1, 5, 9, 3]], np.int32)
    assert np.array_equal(torch_logits(back, tokens),
                          torch_logits(open_checkpoint(small_ckpt), tokens))


def test_a_gguf_of_an_unknown_architecture_is_refused(small_ckpt, tmp_path, monkeypatch):
    from converter.layouts import gguf

    convert(small_ckpt, tmp_path / "g", to="gguf", options=TargetOptions(dtype="f32"),
            quiet=True)
    monkeypatch.setattr(gguf, "ARCHITECTURES", {})
    assert "architecture 'grok', not" in bad_input("inspect", tmp_path / "g")


@pytest.mark.parametrize(("model_type", "message"), [
    (["grok-1"], "model_type list is not a supported architecture (grok-1"),
    ("mixtral", "model_type 'mixtral' is not a supported architecture (grok-1"),
    ("x" * 10_000, "is not a supported architecture"),
])
def test_a_config_json_of_another_model_type_is_refused_by_name(tiny_ckpt, tmp_path,
                                                                  model_type, message):
    convert(tiny_ckpt, tmp_path / "hf", to="hf", options=TargetOptions(dtype="f32"), quiet=True)
    config = tmp_path / "hf" / "config.json"
    data = json.loads(config.read_text())
    data["model_type"] = model_type
    config.write_text(json.dumps(data))
    error = bad_input("inspect", tmp_path / "hf")
    assert message in error and str(config) in error and len(error) < 400


@pytest.mark.parametrize(("value", "message"), [
    (float("inf"), "cannot convert float infinity to integer"),
    ("six thousand", "invalid literal"),
])
def test_llama_cpps_config_keys_of_the_wrong_kind_are_refused(small_ckpt, tmp_path, monkeypatch,
                                                              value, message):
    """A GGUF without our exact config is read from llama.cpp's keys: a bad one is one line."""
    from converter.layouts import gguf as layout

    original = layout.metadata

    def foreign(*args):
        keys = original(*args)
        del keys["grok1.config"]
        keys["grok.embedding_length"] = value
        return keys

    monkeypatch.setattr(layout, "metadata", foreign)
    convert(small_ckpt, tmp_path / "g", to="gguf", options=TargetOptions(dtype="f32"),
            quiet=True)
    monkeypatch.undo()
    error = bad_input("inspect", tmp_path / "g")
    assert message in error and ".gguf" in error


def test_a_gguf_without_our_config_is_read_from_llama_cpps_keys(small_ckpt, tmp_path,
                                                               monkeypatch):
    from converter.layouts import gguf as layout

    original = layout.metadata

    def foreign(*args):
        keys = original(*args)
        del keys["grok1.config"]
        return keys

    monkeypatch.setattr(layout, "metadata", foreign)
    convert(small_ckpt, tmp_path / "g", to="gguf", options=TargetOptions(dtype="f32"),
            quiet=True)
    monkeypatch.undo()
    source, back = open_checkpoint(small_ckpt), open_checkpoint(tmp_path / "g")
    ours, theirs = source.config.to_dict(), back.config.to_dict()
    # only the release's scale-group count is ours alone (llama.cpp has no key for it), and
    # GGUF holds the float constants as float32
    del ours["scale_groups"], theirs["scale_groups"]
    assert {k: np.float32(v) if isinstance(v, float) else v for k, v in theirs.items()} == {
        k: np.float32(v) if isinstance(v, float) else v for k, v in ours.items()}
    tokens = np.array([[1, 5, 9, 3]], np.int32)
    assert np.allclose(torch_logits(back, tokens), torch_logits(source, tokens), atol=1e-5)


@pytest.fixture(scope="module")
def foreign_hf(tiny_ckpt, tmp_path_factory):
    """An hf output whose config.json carries only the keys engines read (no exact `grok1`)."""
    folder = tmp_path_factory.mktemp("foreign") / "hf"
    convert(tiny_ckpt, folder, to="hf", options=TargetOptions(dtype="f32"), quiet=True)
    config = folder / "config.json"
    data = json.loads(config.read_text())
    del data["grok1"]
    config.write_text(json.dumps(data))
    return folder


def test_config_json_without_our_exact_config_reads_through_the_table(foreign_hf, tiny_ckpt):
    """Every field but the release's scale-group count (which no engine key carries)."""
    source = open_checkpoint(tiny_ckpt).config
    assert open_checkpoint(foreign_hf).config == dataclasses.replace(
        source, scale_groups=Grok1Config().scale_groups)


HOSTILE_VALUES = [[1], {"a": 1}, "x", 10**40, True, -5, 0.5, None]


@pytest.mark.parametrize("key", [k.key for k in GROK1.hf_config.keys if k.reads])
def test_every_config_key_engines_read_refuses_a_hostile_value_in_one_line(foreign_hf, tmp_path,
                                                                           key):
    """Each value is either taken (the key is a fallback another key overrides, or the value
    fits, or it reads as unset) or refused by name; never a traceback."""
    from click.testing import CliRunner

    from grok1.cli import main

    folder = tmp_path / "hf"
    folder.mkdir()
    for item in foreign_hf.iterdir():
        (folder / item.name).symlink_to(item)
    data = json.loads((foreign_hf / "config.json").read_text())
    for value in HOSTILE_VALUES:
        (folder / "config.json").unlink()
        (folder / "config.json").write_text(json.dumps({**data, key: value}))
        result = CliRunner().invoke(main, ["inspect", str(folder), "--json"])
        assert result.exit_code in (0, 2), (key, value, result.output[-400:])
        assert "Traceback" not in result.output and "internal error" not in result.output
        if result.exit_code == 2 and result.stderr:  # refused: one line naming the file
            assert "config.json" in result.stderr and len(result.stderr.splitlines()) == 1
        elif result.exit_code == 2:  # read (a null head_dim is derived), its problems listed
            assert json.loads(result.stdout)["problems"]


@pytest.mark.parametrize("key", [k.key for k in GROK1.gguf.config.keys if k.reads])
def test_every_llama_cpp_key_refuses_a_hostile_value_by_name(key):
    """The GGUF container types each value (string, number, array); whatever a key holds,
    the config is made or refused with the file's name, never a Python error."""
    from converter.errors import Grok1Error
    from converter.layouts.gguf import _config

    meta = {**GROK1.gguf.config.write(Grok1Config.preset("small")),
            "tokenizer.ggml.tokens": ["a"] * 256}
    for value in ("x", -5, 0, 1e300, float("inf"), float("nan"), [1, 2], np.float32(1.5)):
        try:
            _config(GROK1, {**meta, f"grok.{key}": value}, "m.gguf")
        except Grok1Error as exc:
            assert str(exc).startswith("m.gguf: ")
