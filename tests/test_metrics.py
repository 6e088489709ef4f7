"""Metrics against hand computations."""

import numpy as np
import pytest

from verify.metrics import ReferenceLogits, compare_logits
from verify.profiles import PROFILES, judge


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_identical_logits_are_perfect():
    logits = np.random.default_rng(0).standard_normal((2, 5, 11)).astype(np.float32)
    tokens = np.array([[1, 4, 5, 6, 7], [1, 3, 9, 0, 0]])
    m = compare_logits(ReferenceLogits.from_logits(logits, tokens, pad_token=0), logits)
    assert m["positions"] == 8
    assert m["kl_mean"] == 0 and m["max_abs_diff"] == 0 and m["top1_agreement"] == 1
    assert m["perplexity_ratio"] == 1 and m["top5_overlap"] == 1
    assert judge(m, PROFILES["lossless"]) == []


def test_kl_top1_and_perplexity_by_hand():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((1, 6, 9)).astype(np.float32)
    cand = (ref + rng.standard_normal(ref.shape) * 0.7).astype(np.float32)
    tokens = np.array([[1, 5, 2, 7, 3, 0]])
    m = compare_logits(ReferenceLogits.from_logits(ref, tokens, pad_token=0), cand)
    valid = tokens[0] != 0
    p, q = softmax(ref[0].astype(np.float64)), softmax(cand[0].astype(np.float64))
    kl = (p * (np.log(p) - np.log(q))).sum(-1)[valid]
    assert m["kl_mean"] == pytest.approx(kl.mean(), rel=1e-9)
    assert m["kl_max"] == pytest.approx(kl.max(), rel=1e-9)
    assert m["top1_agreement"] == pytest.approx(
        (ref[0].argmax(-1) == cand[0].argmax(-1))[valid].mean())
    nxt = [(t, tokens[0, t + 1]) for t in range(5) if tokens[0, t + 1] != 0]
    ppl_ref = np.exp(-np.mean([np.log(p[t, n]) for t, n in nxt]))
    ppl_cand = np.exp(-np.mean([np.log(q[t, n]) for t, n in nxt]))
    assert m["perplexity_reference"] == pytest.approx(ppl_ref)
    assert m["perplexity_ratio"] == pytest.approx(ppl_cand / ppl_ref)
    assert m["max_abs_diff"] == pytest.approx(np.abs(ref - cand)[0][valid].max())


def test_pad_positions_are_ignored():
    ref = np.zeros((1, 3, 4), np.float32)
    cand = ref.copy()
    cand[0, 2] = [9, -9, 9, -9]  # only the pad position differs
    m = compare_logits(ReferenceLogits.from_logits(ref, np.array([[1, 2, 0]]), pad_token=0), cand)
    assert m["kl_max"] == 0 and m["max_abs_diff"] == 0


def test_top_k_reference_gives_a_lower_bound_and_survives_saving(tmp_path):
    rng = np.random.default_rng(2)
    ref = (rng.standard_normal((2, 8, 50)) * 3).astype(np.float32)
    cand = (ref + rng.standard_normal(ref.shape)).astype(np.float32)
    tokens = rng.integers(1, 50, (2, 8))
    full = ReferenceLogits.from_logits(ref, tokens, pad_token=0)
    exact = compare_logits(full, cand)
    full.truncated(10).save(tmp_path / "ref.npz")
    stored = ReferenceLogits.load(tmp_path / "ref.npz")
    approx = compare_logits(stored, cand)
    assert not stored.exact and stored.topk_ids.shape[-1] == 10
    assert 0 < approx["kl_mean"] <= exact["kl_mean"] + 1e-12
    assert approx["kl_mean"] > 0.5 * exact["kl_mean"]
    for key in ("top1_agreement", "perplexity_ratio", "top5_overlap"):
        assert approx[key] == pytest.approx(exact[key])


def test_nonfinite_always_fails():
    ref = np.zeros((1, 2, 4), np.float32)
    cand = ref.copy()
    cand[0, 1, 2] = np.nan
    m = compare_logits(ReferenceLogits.from_logits(ref, np.array([[1, 2]]), pad_token=0), cand)
    assert m["nonfinite"] == 1
    assert any("NaN" in r for r in judge(m, PROFILES["int4"]))


def test_profiles_thresholds():
    base = {"nonfinite": 0, "top1_agreement": 0.98, "kl_mean": 0.004, "perplexity_ratio": 1.004,
            "max_abs_diff": 0.1}
    assert judge(base, PROFILES["int8"]) == []
    assert judge({**base, "kl_mean": 0.006}, PROFILES["int8"]) != []
    assert judge({**base, "top1_agreement": 0.96}, PROFILES["int8"]) != []
    assert judge({**base, "top1_agreement": 0.93, "kl_mean": 0.02}, PROFILES["int4"]) == []
    assert judge({**base, "top1_agreement": 0.79}, PROFILES["int4"].override(min_top1=0.5)) != []
    assert judge(base, PROFILES["lossless"]) != []


def test_corrupt_reference_file_is_bad_input(tmp_path):
    from converter.errors import MalformedFileError
    (tmp_path / "ref.npz").write_bytes(b"junk")
    with pytest.raises(MalformedFileError, match=r"ref\.npz"):
        ReferenceLogits.load(tmp_path / "ref.npz")


def test_per_layer_values_over_the_limit_are_marked_and_the_limits_printed():
    from verify.metrics import MetricSums
    from verify.report import format_markdown, format_table
    from verify.run import ForwardOutcome, judge_outcome

    logits = np.random.default_rng(0).standard_normal((1, 4, 11)).astype(np.float32)
    tokens = np.array([[1, 4, 5, 6]])
    sums = MetricSums.of(ReferenceLogits.from_logits(logits, tokens, pad_token=0).at(
        np.arange(4)), logits.reshape(4, 11), np.array([4, 5, 6, -1]), exact=True)
    layers = [{"layer": 0, "attention": [1e-4, 1.0], "moe": [9e-4, 1.0], "hidden": [1e-4, 1.0]},
              {"layer": 1, "attention": [1e-4, 1.0], "moe": [0.0035, 1.0],
               "hidden": [1e-4, 1.0]}]
    result = judge_outcome(ForwardOutcome(sums, layers, None), PROFILES["int8"])
    assert result.passed and result.metrics["flagged_layers"] == [1]
    table = format_table(result)
    assert "0.0592 !" in table and "0.03 !" not in table
    assert "per-layer error <= 0.05" in table and "top-1 agreement >= 97%" in table
    assert table.splitlines()[-1] == "PASS (1 layer(s) over the per-layer limit 0.05: 1)"
    markdown = format_markdown(result)
    assert "**0.0592**" in markdown and "Per-layer error <= 0.05" not in markdown
    assert "per-layer error <= 0.05" in markdown
