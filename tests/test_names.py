"""The name tables: every tensor name and pattern comes from them, and they map totally."""

import re

import pytest

from converter.errors import UsageError
from converter.formats import PackQuantized
from converter.model import GROK1
from converter.model.config import Grok1Config
from converter.model.names import OutputName

CONFIG = Grok1Config.preset("tiny")
SPECS = GROK1.build_spec(CONFIG)


def spec(role, layer):
    return next(s for s in SPECS if s.role == role and s.layer == layer)


def test_role_facts_are_consistent():
    assert set(GROK1.linear_roles) == {r.role for r in GROK1.roles if r.linear}
    experts = {r.role for r in GROK1.roles if r.expert}
    assert set(GROK1.expert_roles) == experts <= set(GROK1.linear_roles)
    assert {r.role for r in GROK1.roles if r.matrix} == {*GROK1.linear_roles, "router"}
    assert all(s.quantized == GROK1.role[s.role].linear for s in SPECS)


@pytest.mark.parametrize(("names", "expected"), [
    ("hpcai", ["model.layers.10.moe_block.experts.3.linear_1.weight_packed",
               "model.layers.10.moe_block.experts.3.linear_1.weight_scale"]),
    ("sglang", ["model.layers.10.block_sparse_moe.experts.3.w2.weight_packed",
                "model.layers.10.block_sparse_moe.experts.3.w2.weight_scale"]),
])
def test_expert_names(names, expected):
    outs = list(GROK1.scheme(names).names_for(spec("moe_down", 10),
                                              ("weight_packed", "weight_scale")))
    assert len(outs) == 2 * CONFIG.experts
    assert [o.name for o in outs if o.expert == 3] == expected
    assert all(o.layer == 10 and o.role == "moe_down" for o in outs)


def test_module_of_and_plain_parts():
    hpcai = GROK1.name_schemes["hpcai"]
    out = OutputName("model.layers.2.attn.q_proj.weight", "attn_q", 2, None, "weight")
    assert hpcai.module_of(out) == "model.layers.2.attn.q_proj"
    assert hpcai.plain_part("pre_moe_norm") == "scale" and hpcai.plain_part("router") == "weight"
    assert GROK1.name_schemes["sglang"].plain_part("final_norm") == "weight"


@pytest.mark.parametrize("names", list(GROK1.name_schemes))
def test_module_patterns_match_exactly_their_role(names):
    table = GROK1.name_schemes[names]
    every = {role: [table.module(role, layer, expert) for layer in range(CONFIG.layers)
                    for expert in (range(CONFIG.experts) if GROK1.role[role].expert else [None])]
             for role in (*GROK1.linear_roles, "router")}
    for role in every:
        pattern = re.compile(table.module_pattern(role).removeprefix("re:"))
        for other, modules in every.items():
            assert all(bool(pattern.match(m)) == (other == role) for m in modules), (role, other)


@pytest.mark.parametrize("names", list(GROK1.name_schemes))
def test_expected_names_are_total(names):
    table = GROK1.name_schemes[names]
    fmt = PackQuantized(8, 32)
    parts = {r.role: fmt.parts() if r.linear else (table.plain_part(r.role),) for r in GROK1.roles}
    expected = table.expected(SPECS, parts)
    per_layer_linears = sum(CONFIG.experts if GROK1.role[r].expert else 1
                            for r in GROK1.linear_roles)
    plain = 2 + 5 * CONFIG.layers  # embeddings, final norm; four norms and a router per layer
    count = plain + CONFIG.layers * per_layer_linears * len(fmt.parts())
    assert len(expected) == count + (1 if table.tied_lm_head else 0)
    assert len(set(expected)) == len(expected)


def test_layout_facts_live_in_the_table():
    assert GROK1.scheme("sglang").presharded_moe is False
    assert GROK1.scheme("hpcai").presharded_moe is None
    assert GROK1.name_schemes["sglang"].tied_lm_head == "lm_head.weight"
    with pytest.raises(UsageError, match="known: hpcai, sglang"):
        GROK1.scheme("nope")
