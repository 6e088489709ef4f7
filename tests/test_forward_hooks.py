"""The streamed forward's hooks: every Linear's input and every layer's end are seen, in order
and with the shapes of the model, and observing changes nothing."""

import collections

import numpy as np
import pytest
import torch

from converter.forward.base import ForwardHooks
from converter.forward.drive import observe, stream_logits
from converter.forward.grok1 import StreamedGrok1
from converter.hf_model.grok1_layers import rms_norm
from converter.layouts import open_checkpoint

ATTENTION = ("attn_q", "attn_k", "attn_v", "attn_o")
EXPERTS = ("moe_gate", "moe_up", "moe_down")


@pytest.fixture(scope="module")
def tokens(upstream):
    with np.load(upstream / "oracle.npz") as data:
        return data["tokens"]


class Recorder:
    """Hooks that keep what they are shown."""

    def __init__(self):
        self.inputs = []
        self.ends = []
        self.hooks = ForwardHooks(linear_input=self.linear_input, layer_end=self.layer_end)

    def linear_input(self, layer, role, expert, x, real):
        assert real.dtype == torch.bool and real.shape == x.shape[:1]
        self.inputs.append((layer, role, expert, tuple(x.shape), x.clone(), int(real.sum())))

    def layer_end(self, layer, hidden):
        self.ends.append((layer, hidden.clone()))


def test_hooks_see_every_linear_input_and_layer_end(upstream, tokens):
    reader = open_checkpoint(upstream)
    c = reader.config
    seen = Recorder()
    logits = np.concatenate(list(stream_logits(reader, tokens, hooks=seen.hooks)))

    assert [layer for layer, _ in seen.ends] == list(range(c.layers))
    assert all(h.shape == (*tokens.shape, c.emb) for _, h in seen.ends)
    positions, real = tokens.size, int((tokens != c.pad_token).sum())
    assert real < positions  # the oracle's batch is padded
    for layer in range(c.layers):
        mine = [r for r in seen.inputs if r[0] == layer]
        attention = {(role, shape) for _, role, expert, shape, _, _ in mine if expert is None}
        assert {r[5] for r in mine if r[2] is None} == {real}
        assert attention == {("attn_q", (positions, c.emb)), ("attn_k", (positions, c.emb)),
                             ("attn_v", (positions, c.emb)), ("attn_o", (positions, c.q_dim))}
        routed, routed_real = collections.Counter(), collections.Counter()
        for _, role, expert, shape, _, n in mine:
            if role in EXPERTS:
                assert 0 <= expert < c.experts
                assert shape[1] == (c.ffn_size if role == "moe_down" else c.emb)
                routed[role] += shape[0]
                routed_real[role] += n
        # every position goes to top-k experts, and each routed token passes all three
        assert routed == {role: positions * c.topk for role in EXPERTS}
        assert routed_real == {role: real * c.topk for role in EXPERTS}

    # the last layer's end is what the head turns into the logits
    model = StreamedGrok1(reader)
    head = model.head(seen.ends[-1][1].reshape(-1, c.emb))
    assert np.array_equal(head, logits)


def test_a_linear_input_is_what_the_linear_multiplies(upstream, tokens):
    """The first layer's query input times W_q is the query projection the forward makes."""
    reader = open_checkpoint(upstream)
    seen = Recorder()
    observe(reader, tokens, seen.hooks)
    x = next(r[4] for r in seen.inputs if r[:3] == (0, "attn_q", None))
    model = StreamedGrok1(reader)
    weights = model.load_layer(0)
    assert torch.equal(model._matmul(x, weights["attn_q"], "attn_q"),
                       x @ torch.from_numpy(weights["attn_q"].dequantize()))
    embedded = model.embed(tokens).reshape(-1, reader.config.emb)
    norm = torch.from_numpy(np.asarray(weights["pre_attn_norm"], np.float32))
    assert torch.equal(x, rms_norm(embedded, norm, reader.config.rms_norm_eps))


def test_observing_changes_nothing_and_observe_matches_stream(upstream, tokens):
    reader = open_checkpoint(upstream)
    plain = np.concatenate(list(stream_logits(reader, tokens)))
    seen = Recorder()
    hooked = np.concatenate(list(stream_logits(reader, tokens, hooks=seen.hooks)))
    assert np.array_equal(plain, hooked)
    calibration = Recorder()
    observe(reader, tokens, calibration.hooks)
    for (la, a), (lb, b) in zip(seen.ends, calibration.ends, strict=True):
        assert la == lb and torch.equal(a, b)
    assert [(*r[:4], r[5]) for r in seen.inputs] == [(*r[:4], r[5]) for r in calibration.inputs]
    # one sequence at a time: the same layer ends up to float32 summation order
    one_by_one = Recorder()
    observe(reader, tokens, one_by_one.hooks, batch=1)
    for (_, a), (_, b) in zip(seen.ends, one_by_one.ends, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
