"""GGUF files llama.cpp refuses are refused here too, by `inspect` and `convert` alike, in one
line: tensors that overlap, alias or are misaligned, duplicate or mistyped metadata keys,
nested arrays, oversized headers, and split sets whose members disagree."""

import shutil
import struct
import tracemalloc

import pytest
from click.testing import CliRunner

from converter.errors import MalformedFileError
from converter.files.gguf_file import MAX_HEADER, GGUFReader
from grok1.cli import main
from tests.conftest import bad_input

UINT16, UINT32, STRING, ARRAY, UINT8 = 2, 4, 8, 9, 0


def string(text):
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def raw_gguf(kvs, tensors, data=b""):
    """A GGUF v3 from explicit parts: kvs (key, type, payload), tensors (name, dims, ggml
    type, offset)."""
    parts = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kvs))]
    for key, kind, payload in kvs:
        parts += [string(key), struct.pack("<I", kind), payload]
    for name, dims, kind, offset in tensors:
        parts += [string(name), struct.pack("<I", len(dims)),
                  struct.pack(f"<{len(dims)}Q", *dims), struct.pack("<IQ", kind, offset)]
    head = b"".join(parts)
    return head + b"\0" * (-len(head) % 32) + data


ARCH = ("general.architecture", STRING, string("grok"))


def refused(tmp_path, content):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "grok-1.gguf").write_bytes(content)
    with pytest.raises(MalformedFileError) as caught:
        GGUFReader(folder / "grok-1.gguf")
    line = bad_input("inspect", folder)
    assert bad_input("convert", folder, tmp_path / "out") == line
    assert not (tmp_path / "out").exists()
    return str(caught.value)


@pytest.mark.parametrize(("tensors", "message"), [
    ([("a", (16,), 0, 0), ("b", (8,), 0, 32)], "b is at data offset 32, expected 64"),
    ([("a", (8,), 0, 0), ("b", (8,), 0, 0)], "b is at data offset 0, expected 32"),
    ([("a", (3,), 0, 0), ("b", (8,), 0, 12)], "b is at data offset 12, expected 32"),
    ([("a", (8,), 0, 32), ("b", (8,), 0, 0)], "a is at data offset 32, expected 0"),
], ids=["overlapping", "aliased", "misaligned", "out of order"])
def test_tensor_offsets_must_follow_each_other(tmp_path, tensors, message):
    assert message in refused(tmp_path, raw_gguf([ARCH], tensors, b"\0" * 128))


@pytest.mark.parametrize(("kvs", "message"), [
    ([ARCH, ARCH], "'general.architecture' appears twice"),
    ([ARCH, ("general.alignment", ARRAY, struct.pack("<IQ", UINT32, 1) + b"\x20\0\0\0")],
     "'general.alignment' is of type array, expected uint32"),
    ([("general.architecture", ARRAY, struct.pack("<IQ", UINT8, 4) + b"grok")],
     "'general.architecture' is of type array, expected string"),
    ([ARCH, ("general.alignment", UINT32, struct.pack("<I", 48))],
     "alignment 48 is not a power of 2"),
    ([ARCH, ("split.no", UINT32, struct.pack("<I", 0))], "'split.no' is of type uint32"),
    ([ARCH, ("x", ARRAY, struct.pack("<IQ", ARRAY, 1) * 100_000)], "an array of arrays"),
], ids=["duplicate key", "alignment array", "architecture bytes", "alignment not 2^n",
        "split.no u32", "nested arrays"])
def test_metadata_is_checked_as_llama_cpp_checks_it(tmp_path, kvs, message):
    assert message in refused(tmp_path, raw_gguf(kvs, [("a", (8,), 0, 0)], b"\0" * 32))


def test_an_oversized_header_is_refused_before_it_is_read(tmp_path):
    big = ("general.name", STRING, string(b"x" * (MAX_HEADER + 1)))
    path = tmp_path / "big.gguf"
    path.write_bytes(raw_gguf([ARCH, big], []))
    tracemalloc.start()
    with pytest.raises(MalformedFileError, match="larger than 32 MiB"):
        GGUFReader(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, peak


@pytest.fixture(scope="module")
def split_set(small_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("split") / "q8"
    result = CliRunner().invoke(main, ["convert", str(small_ckpt), str(folder), "--to", "gguf",
                                       "--dtype", "q8_0", "--shard-size", "20MB", "--quiet"])
    assert result.exit_code == 0, result.output
    (folder / "grok1-manifest.json").unlink()
    return folder


def test_split_members_must_say_their_place(split_set, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(split_set, broken)
    second = sorted(broken.glob("*.gguf"))[1]
    data = bytearray(second.read_bytes())
    at = data.index(b"split.no") + len(b"split.no") + 4
    assert struct.unpack_from("<H", data, at)[0] == 1
    struct.pack_into("<H", data, at, 2)
    second.write_bytes(bytes(data))
    line = bad_input("inspect", broken)
    assert "says it is split 2 of" in line and "file 1 of a set of" in line


def test_a_tensor_in_two_members_is_refused(split_set, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(split_set, broken)
    files = sorted(broken.glob("*.gguf"))
    first, second = (set(GGUFReader(f).tensors) for f in files[:2])
    mine, theirs = next((a, b) for a in sorted(second) for b in sorted(first)
                        if len(a) == len(b))
    data = files[1].read_bytes()
    files[1].write_bytes(data.replace(string(mine), string(theirs), 1))
    line = bad_input("convert", broken, tmp_path / "out")
    assert f"tensor {theirs} is also in {files[0].name}" in line


def test_the_type_table_is_ggmls():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from converter.files.gguf_file import GGML_TYPES

    for name, kind in GGML_TYPES.items():
        assert GGMLQuantizationType[name].value == kind.id, name
        assert GGML_QUANT_SIZES[GGMLQuantizationType[name]] == (kind.block, kind.block_bytes)
