"""Hostile and malformed input: every case is refused with one line and exit 2, never a
traceback, never read as if it were fine, and a pickle never runs code."""

import json
import math
import shutil
import struct
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

from converter.errors import MalformedFileError, UnsafePickleError
from converter.files.pickle_reader import load_leaf, parse_leaf
from grok1.cli import main
from tests.conftest import bad_input


def ok(*args):
    result = CliRunner().invoke(main, [*map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result


def inspect_problems(path):
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    return json.loads(result.stdout)["problems"]


@pytest.fixture
def ckpt(tiny_ckpt, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    return folder


@pytest.fixture(scope="module")
def hf_f32(tiny_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "hf"
    ok("convert", tiny_ckpt, folder, "--dtype", "f32", "--shard-size", "4MB")
    return folder


@pytest.fixture
def hf(hf_f32, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(hf_f32, folder)
    (folder / "grok1-manifest.json").unlink()
    return folder


# ---- pickles -----------------------------------------------------------------------------

def text(s):
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def glob(module, name):
    return text(module) + text(name) + b"\x93"


DTYPE_F4 = (glob("numpy", "dtype") + text("f4") + b"\x89\x88\x87R"
            + b"(K\x03" + text("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")


def array(shape, payload=b"\x00" * 4, dtype=DTYPE_F4):
    head = (glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray")
            + b"K\x00\x85C\x01b\x87R")
    return b"\x80\x04" + head + b"(K\x01" + shape + dtype + b"\x89C" + bytes(
        [len(payload)]) + payload + b"tb."


HOSTILE = {
    "REDUCE of an allowed non-callable": (b"\x80\x04" + glob("numpy", "ndarray") + b")R.",
                                          "refuses to call"),
    "NEWOBJ of an allowed non-class": (b"\x80\x04" + glob("numpy", "dtype") + b")\x81.",
                                       "refuses to construct"),
    "BUILD on a global": (b"\x80\x04" + glob("numpy", "ndarray") + b"}b.", "refuses BUILD"),
    "nested tuple as callable": (b"\x80\x04)\x85)R.", "refuses to call"),
    "unhashable keys": (b"\x80\x04}(}}u.", "malformed SETITEMS"),
    "one-element dtype state": (array(b"K\x01\x85", dtype=glob("numpy", "dtype") + text("f4")
                                      + b"\x89\x88\x87RK\x03\x85b"), "dtype state"),
    "negative shape": (array(b"J\xff\xff\xff\xff\x85"), "shape"),
    "None shape": (array(b"N"), "shape"),
    "overflowing shape": (array(b"(" + b"J\xff\xff\xff\x7f" * 6 + b"t"), "needs"),
    "array never built": (b"\x80\x04" + glob("numpy.core.multiarray", "_reconstruct")
                          + glob("numpy", "ndarray") + b"K\x00\x85C\x01b\x87R.", "never given"),
    "memory bomb of dicts": (b"\x80\x04" + b"}" * (5 << 20) + b".", "opcodes"),
    "memory bomb of marks": (b"\x80\x04" + b"(" * (5 << 20) + b".", "opcodes"),
    "memory bomb of memos": (b"\x80\x04}" + b"\x94" * (5 << 20) + b".", "opcodes"),
    "a huge string": (b"\x80\x04X" + struct.pack("<I", 1 << 22) + b"a" * (1 << 22) + b".",
                      "string"),
}


def test_valid_crafted_array_parses():
    assert parse_leaf(array(b"K\x01\x85"), "x").shape == (1,)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_pickles_are_refused_in_bounded_memory(name, ckpt):
    data, words = HOSTILE[name]
    victim = ckpt / "ckpt-0" / "tensor00001_000"
    victim.write_bytes(data)
    tracemalloc.start()
    with pytest.raises(MalformedFileError) as caught:
        load_leaf(victim)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < (1 << 20), f"{peak} bytes for a {len(data)}-byte file"
    assert words is None or words in str(caught.value)
    assert "tensor00001_000" in bad_input("convert", ckpt, ckpt.parent / "out")


@pytest.mark.parametrize("name", ["REDUCE of an allowed non-callable",
                                  "NEWOBJ of an allowed non-class", "BUILD on a global"])
def test_refusals_past_the_allow_list_are_unsafe_pickle_errors(name, tmp_path):
    path = tmp_path / "tensor00000_000"
    path.write_bytes(HOSTILE[name][0])
    with pytest.raises(UnsafePickleError):
        load_leaf(path)


# ---- the Grok-1 config beside ckpt-0 -------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "words"), [
    ("layers", 10**9, "layers=1000000000"), ("layers", 12.5, "layers must be an integer"),
    ("layers", True, "layers must be an integer"), ("emb", 64.0, "emb must be an integer"),
    ("emb_mult", float("nan"), "emb_mult must be a finite number"),
    ("rms_norm_eps", -1, "rms_norm_eps"), ("pad_token", 999999, "pad_token"),
    ("max_seq_len", -1, "max_seq_len"), ("widening_factor", "abc", "widening_factor"),
])
def test_bad_config_values(ckpt, key, value, words):
    config = json.loads((ckpt / "config.json").read_text())
    config[key] = value
    (ckpt / "config.json").write_text(json.dumps(config))
    line = bad_input("inspect", ckpt)
    assert words in line and "config.json" in line


# ---- safetensors headers -----------------------------------------------------------------

def rewrite_header(path, edit):
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    new = edit(header)
    encoded = new if isinstance(new, bytes) else json.dumps(new).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length:])


def first_shard(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return folder / sorted(set(index["weight_map"].values()))[0]


def _tensor_names(header):
    return [k for k in header if k != "__metadata__"]


def overlapping(header):
    a, b = _tensor_names(header)[:2]
    header[b]["data_offsets"] = list(header[a]["data_offsets"])
    return header


def negative(header):
    name = _tensor_names(header)[0]
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin - 64, end - 64]
    return header


def duplicate(header):
    body = json.dumps(header)
    name = _tensor_names(header)[0]
    entry = json.dumps({name: header[name]})[1:-1]
    return (body[:-1] + ", " + entry + "}").encode()


def field(name_of, value):
    def edit(header):
        header[_tensor_names(header)[0]][name_of] = value
        return header
    return edit


@pytest.mark.parametrize("edit", [overlapping, negative, duplicate,
                                  field("data_offsets", ["0", "16"]),
                                  field("shape", [-1, 4]), field("shape", ["4"]),
                                  field("shape", [4.0]), field("dtype", "F64")],
                         ids=["overlap", "negative", "duplicate", "string-offsets",
                              "negative-shape", "string-shape", "float-shape", "dtype"])
def test_malformed_safetensors_headers(hf, tmp_path, edit):
    shard = first_shard(hf)
    rewrite_header(shard, edit)
    assert shard.name in bad_input("convert", hf, tmp_path / "out", "--to", "torch")
    assert any(shard.name in p for p in inspect_problems(hf))


# ---- index.json --------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["../../../../etc/passwd", "/etc/passwd", ".", 7, "a/b"])
def test_index_entries_must_be_plain_shard_names(hf, tmp_path, value):
    index_path = hf / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = sorted(index["weight_map"])[0]
    index["weight_map"][name] = value
    index_path.write_text(json.dumps(index))
    line = bad_input("convert", hf, tmp_path / "out", "--to", "torch")
    assert "model.safetensors.index.json" in line


def test_index_weight_map_that_is_a_string(hf, tmp_path):
    index_path = hf / "model.safetensors.index.json"
    index_path.write_text(json.dumps({"weight_map": "model-00001.safetensors"}))
    assert "weight_map" in bad_input("inspect", hf)


# ---- what inspect must find ----------------------------------------------------------------

def rewrite_tensor(folder, name, make):
    from converter.files.shards import Entry, SafetensorsReader, SafetensorsWriter

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    path = folder / index["weight_map"][name]
    reader = SafetensorsReader(path)
    arrays = {n: reader.get(n) for n in reader.entries}
    dtypes = {n: e.dtype for n, (e, _) in reader.entries.items()}
    arrays[name], dtypes[name] = make(arrays[name])
    entries = [Entry(n, dtypes[n], arrays[n].shape) for n in arrays]
    with SafetensorsWriter(path, entries) as writer:
        for entry in entries:
            writer.write(entry.name, arrays[entry.name])


@pytest.mark.parametrize(("name", "make", "words"), [
    ("model.layers.1.pre_moe_norm.scale", lambda a: (a.astype(np.int32), "I32"), "is I32"),
    ("model.layers.1.attn.k_proj.weight",
     lambda a: (a[:, :-1].astype(np.float16), "F16"), "has shape"),
])
def test_inspect_finds_what_convert_would_hit(hf, tmp_path, name, make, words):
    rewrite_tensor(hf, name, make)
    problems = inspect_problems(hf)
    assert any(name in p and words in p for p in problems), problems
    assert name in bad_input("convert", hf, tmp_path / "out", "--to", "torch")


def test_inspect_finds_a_bad_recorded_weight_shape(tiny_ckpt, tmp_path):
    ok("convert", tiny_ckpt, tmp_path / "hf8", "--dtype", "int8")
    (tmp_path / "hf8" / "grok1-manifest.json").unlink()
    name = "model.layers.2.attn.q_proj.weight_shape"
    path = tmp_path / "hf8" / "model.safetensors"
    from converter.files.shards import SafetensorsReader, SafetensorsWriter

    reader = SafetensorsReader(path)
    entries = [e for e, _ in reader.entries.values()]
    arrays = {e.name: reader.get(e.name) for e in entries}
    arrays[name] = np.array([2**40, -5], np.int64)
    with SafetensorsWriter(path, entries) as writer:
        for entry in entries:
            writer.write(entry.name, arrays[entry.name])
    problems = inspect_problems(tmp_path / "hf8")
    assert any(name in p and "1099511627776" in p for p in problems), problems
    assert name in bad_input("convert", tmp_path / "hf8", tmp_path / "xai", "--to", "xai")


def test_torch_shard_with_a_flipped_byte(tiny_ckpt, tmp_path):
    ok("convert", tiny_ckpt, tmp_path / "pt", "--to", "torch", "--dtype", "f32")
    shard = tmp_path / "pt" / "pytorch_model.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    (tmp_path / "pt" / "grok1-manifest.json").unlink()
    assert "pytorch_model.bin" in bad_input("convert", tmp_path / "pt", tmp_path / "hf")
    assert "pytorch_model.bin" in bad_input("inspect", tmp_path / "pt")


@pytest.mark.parametrize("value", ["int", "float64"])
def test_torch_state_dict_with_a_foreign_value(tiny_ckpt, tmp_path, value):
    import torch

    ok("convert", tiny_ckpt, tmp_path / "pt", "--to", "torch", "--dtype", "f32")
    shard = tmp_path / "pt" / "pytorch_model.bin"
    state = torch.load(shard, weights_only=True)
    name = "model.norm.scale"
    state[name] = 7 if value == "int" else state[name].double()
    torch.save(state, shard)
    assert name in bad_input("convert", tmp_path / "pt", tmp_path / "hf")


# ---- HF config.json ------------------------------------------------------------------------

def edit_config(folder, edit):
    path = folder / "config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


@pytest.mark.parametrize(("edit", "words"), [
    (lambda c: {**c, "grok1": {**c["grok1"], "layers": 1.5}}, "layers must be an integer"),
    (lambda c: {**c, "grok1": {**c["grok1"], "layers": "12"}}, "layers must be an integer"),
    (lambda c: {k: v for k, v in c.items() if k != "grok1"} | {"num_hidden_layers": "12"},
     "layers must be an integer"),
    (lambda c: [], "expected a JSON object"),
])
def test_hf_config_values(hf, tmp_path, edit, words):
    edit_config(hf, edit)
    line = bad_input("convert", hf, tmp_path / "out")
    assert words in line and "config.json" in line


def test_quantization_group_without_weights(tiny_ckpt, tmp_path):
    ok("convert", tiny_ckpt, tmp_path / "hf8", "--dtype", "int8")

    def edit(config):
        for group in config["quantization_config"]["config_groups"].values():
            group.pop("weights")
        return config

    edit_config(tmp_path / "hf8", edit)
    assert "weights" in bad_input("inspect", tmp_path / "hf8")


def test_third_party_config_without_grok1_keys_reads(hf, tmp_path):
    edit_config(hf, lambda c: {k: v for k, v in c.items() if k not in ("grok1", "grok1_names")})
    ok("convert", hf, tmp_path / "again", "--dtype", "f32")
    assert math.isclose(json.loads((tmp_path / "again" / "config.json").read_text())[
        "embedding_multiplier_scale"], 8.0)
