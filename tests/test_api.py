"""The library verbs: one function per job, as the command line's bodies call them."""

import subprocess
import sys

import numpy as np
import pytest

import grok1


def test_every_verb_is_a_function():
    for name in grok1.__all__:
        assert callable(getattr(grok1, name)), name
    with pytest.raises(AttributeError, match="no attribute 'transmogrify'"):
        grok1.transmogrify  # noqa: B018


def test_importing_the_package_imports_no_numeric_library():
    code = "import grok1, sys; print(sorted({'numpy', 'torch'} & set(sys.modules)))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert found == "[]"


def test_convert_quantize_inspect_verify_and_logits_from_a_program(tiny_ckpt, tmp_path):
    summary = grok1.convert(tiny_ckpt, tmp_path / "hf", to="hf", dtype="f32", quiet=True)
    assert summary["tensors"] > 0
    assert grok1.inspect(tmp_path / "hf")["problems"] == []
    result = grok1.verify(tiny_ckpt, tmp_path / "hf", seq_len=8, batch=1, quiet=True)
    assert result.passed and result.profile == "lossless"
    grok1.quantize(tiny_ckpt, tmp_path / "w8", "int8", tokenizer="none", quiet=True)
    assert not grok1.verify(tiny_ckpt, tmp_path / "w8", profile_name="lossless", seq_len=8,
                            batch=1, quiet=True).passed
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.array([[1, 2, 3]], np.int32))
    shape, _ = grok1.logits(tmp_path / "hf", tmp_path / "l.npy", tokens_path=tokens, quiet=True)
    assert shape[:2] == (1, 3)


def test_option_objects_take_flat_keywords_and_refuse_unknown_ones(tiny_ckpt, tmp_path):
    from converter.errors import UsageError
    from verify.options import VerifyOptions

    options = VerifyOptions.from_keywords(seq_len=8, texts=("a b",), per_layer=True)
    assert (options.tokens.seq_len, options.tokens.texts, options.per_layer) == (8, ("a b",), True)
    with pytest.raises(UsageError, match="unknown verify option"):
        VerifyOptions.from_keywords(seq_lenn=8)
    summary = grok1.quantize(tiny_ckpt, tmp_path / "w4", "int4", group_size=32, symmetric=False,
                             tokenizer="none", quiet=True)
    assert summary["scheme"] == "int4-g32-asym-rtn"
