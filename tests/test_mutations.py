"""Broken candidates built from the upstream fixture: `verify` must fail each and, with
--per-layer, name the layer that broke."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from converter.layouts import open_checkpoint
from converter.layouts.xai import XaiCheckpoint, value_payloads, write_leaf
from converter.tensors import QuantizedWeight8bit
from grok1.cli import main
from verify.profiles import PROFILES
from verify.run import run_verification
from verify.tokens import random_tokens


@pytest.fixture
def candidate(upstream, tmp_path):
    folder = tmp_path / "candidate"
    shutil.copytree(upstream, folder, ignore=shutil.ignore_patterns("oracle.npz"))
    for path in (folder / "ckpt-0").iterdir():
        path.chmod(0o644)
    return folder


def rewrite(folder, layer, role, transform):
    checkpoint = XaiCheckpoint.open(folder)
    spec = next(s for s in checkpoint.specs if s.layer == layer and s.role == role)
    value = transform(checkpoint.read(spec))
    write_leaf(checkpoint.path_of(spec), spec, value_payloads(value))


def swap_paths(pa, pb):
    tmp = pa.with_suffix(".swap")
    pa.rename(tmp)
    pb.rename(pa)
    tmp.rename(pb)


def swap_files(folder, a, b):
    checkpoint = XaiCheckpoint.open(folder)
    paths = {s.name: checkpoint.path_of(s) for s in checkpoint.specs}
    for spec_a in (s for s in checkpoint.specs if s.layer == a):
        name_b = spec_a.name.replace(f"decoder_layer_{a}/", f"decoder_layer_{b}/")
        swap_paths(paths[spec_a.name], paths[name_b])


def verify_cli(reference, candidate, tmp_path):
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["verify", str(reference), str(candidate), "--per-layer",
                                       "--seq-len", "16", "--batch", "2",
                                       "--json", str(report)])
    return result.exit_code, json.loads(report.read_text()), result.output


def zero_expert(value, expert=3):
    weight = np.array(value.weight)
    weight[expert] = 0
    return QuantizedWeight8bit(weight, np.array(value.scales))


def transposed_bytes(value):
    """A converter that wrote W.T's bytes under W's shape."""
    weight = np.ascontiguousarray(np.asarray(value.weight).T).reshape(value.weight.shape)
    return QuantizedWeight8bit(weight, np.array(value.scales))


@pytest.mark.parametrize(("name", "mutate", "layers"), [
    ("layers 3 and 7 swapped", lambda f: swap_files(f, 3, 7), {3, 7}),
    ("gate and up swapped in layer 5",
     lambda f: swap_files_within(f, 5, "moe_gate", "moe_up"), {5}),
    ("expert 3 zeroed in layer 10", lambda f: rewrite(f, 10, "moe_down", zero_expert), {10}),
    ("query transposed in layer 1", lambda f: rewrite(f, 1, "attn_q", transposed_bytes), {1}),
])
def test_verify_fails_and_names_the_layer(upstream, candidate, tmp_path, name, mutate, layers):
    mutate(candidate)
    code, report, output = verify_cli(upstream, candidate, tmp_path)
    assert code == 1, output
    assert not report["passed"]
    assert set(report["metrics"]["flagged_layers"]) == layers, name


def swap_files_within(folder, layer, role_a, role_b):
    checkpoint = XaiCheckpoint.open(folder)
    specs = {s.role: s for s in checkpoint.specs if s.layer == layer}
    swap_paths(checkpoint.path_of(specs[role_a]), checkpoint.path_of(specs[role_b]))


class InterleavedScales:
    """A reader whose layer-`layer` MoE down-projection broadcasts its G = 8 scales per row
    (row k uses group k % G, the np.tile mistake) instead of per block of K/G rows."""

    def __init__(self, reader, layer):
        self.reader, self.layer = reader, layer
        self.layout, self.config, self.specs = reader.layout, reader.config, reader.specs
        self.architecture = reader.architecture

    def read(self, spec):
        value = self.reader.read(spec)
        if spec.layer != self.layer or spec.role != "moe_down":
            return value
        codes = np.asarray(value.weight, np.float32)
        groups = np.asarray(value.scales)
        k = codes.shape[-2]
        bits = np.take(groups, np.arange(k) % groups.shape[-2], axis=-2)
        return codes * (bits.astype(np.uint32) << 16).view(np.float32)

    def read_expert(self, spec, expert):
        return self.read(spec)[expert]


def test_wrongly_broadcast_group_scales_fail(upstream):
    reference = open_checkpoint(upstream)
    broken = InterleavedScales(open_checkpoint(upstream), layer=4)
    tokens = random_tokens(256, batch=2, seq_len=16, seed=0)
    result = run_verification(reference, broken, tokens, thresholds=PROFILES["int8"],
                              per_layer=True)
    assert not result.passed
    assert result.metrics["flagged_layers"] == [4]


def test_unbroken_copy_passes_lossless(upstream, candidate, tmp_path):
    code, report, output = verify_cli(upstream, candidate, tmp_path)
    assert code == 0, output
    assert report["metrics"]["flagged_layers"] == [] and report["tensor_mismatches"] == []


def test_stored_reference_reused(upstream, candidate, tmp_path):
    ref = tmp_path / "ref.npz"
    runner = CliRunner()
    first = runner.invoke(main, ["verify", str(upstream), str(upstream), "--seq-len", "16",
                                 "--save-reference", str(ref), "--top-k", "32"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(main, ["verify", str(candidate), "--reference-logits", str(ref)])
    assert again.exit_code == 0, again.output
    rewrite(candidate, 2, "moe_up", zero_expert)
    broken = runner.invoke(main, ["verify", str(candidate), "--reference-logits", str(ref)])
    assert broken.exit_code == 1, broken.output


def test_different_models_are_bad_input(upstream, tiny_ckpt, tmp_path):
    other = tmp_path / "other"
    CliRunner().invoke(main, ["make-tiny", str(other), "--layers", "2"])
    result = CliRunner().invoke(main, ["verify", str(upstream), str(other)])
    assert result.exit_code == 2 and "different models" in result.output
    result = CliRunner().invoke(main, ["verify", str(upstream)])
    assert result.exit_code == 2


def test_verify_with_padded_tokens_and_markdown_report(upstream, candidate, tmp_path):
    with np.load(upstream / "oracle.npz") as oracle:
        np.save(tmp_path / "tokens.npy", oracle["tokens"])  # second row right-padded with 0
    rewrite(candidate, 6, "moe_gate", zero_expert)
    result = CliRunner().invoke(main, ["verify", str(upstream), str(candidate), "--tokens",
                                       str(tmp_path / "tokens.npy"), "--per-layer",
                                       "--markdown", str(tmp_path / "report.md"),
                                       "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["metrics"]["positions"] == 45 and report["metrics"]["flagged_layers"] == [6]
    markdown = (tmp_path / "report.md").read_text()
    assert "Result: **failed" in markdown and "| top-1 agreement |" in markdown
    assert "| 6 |" in markdown
