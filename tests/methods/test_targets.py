"""The table of methods/targets.py: families by model_type, others by structure, and what is refused.

A family the table does not name is recognised by structure; what truly cannot be mapped (q/k/v fused
in an unknown family, the per-expert MLPs of a mixture of experts, a forward that bypasses modules) is
refused by the method that needs it, with the reason, while the rest still applies.
"""

from __future__ import annotations

import pytest

from peftrepro.errors import ConfigError
from peftrepro.methods import apply_method, count_parameters, formula_params, make_method_config
from peftrepro.methods.targets import FAMILIES, Packing, Rows, layout


def _lora(weights: list[str]):
    return make_method_config("lora", {"weights": weights, "r": 2})


def test_each_model_type_is_in_one_row_of_the_table():
    model_types = [model_type for family in FAMILIES for model_type in family.model_types]
    assert len(model_types) == len(set(model_types))


def test_packing_rows_repeat_the_parts_in_order():
    rows = Packing(2, {"W_q": 4, "W_k": 2, "W_v": 2}).rows()
    assert rows["W_q"] == Rows(((0, 4), (8, 12)))
    assert rows["W_k"] == Rows(((4, 6), (12, 14)))
    assert rows["W_v"] == Rows(((6, 8), (14, 16)))
    assert rows["W_q"].index().tolist() == [0, 1, 2, 3, 8, 9, 10, 11]


def _assert_trains_its_count(model, config) -> None:
    applied = apply_method(model, config)
    assert count_parameters(model)[0] == formula_params(model, applied.config) > 0


def test_a_family_the_table_does_not_name_is_recognised_by_structure(tiny_model):
    model = tiny_model("olmo2")  # a Llama layout under its own model_type
    found = layout(model)
    assert (found.family, found.recognised_by) == ("olmo2", "structure")
    assert found.weights["W_q"].module == "self_attn.q_proj" and found.weights["W_gate"].module == "mlp.gate_proj"
    _assert_trains_its_count(model, make_method_config("lora", {"weights": ["W_q", "W_v", "W_gate"], "r": 2}))


def test_q_k_v_fused_in_an_unknown_family_are_refused_with_the_reason(tiny_model):
    model = tiny_model("openai-gpt")  # GPT-1: c_attn, a packing the table does not describe
    with pytest.raises(ConfigError, match=r"'W_q' does not exist .*fused in `attn.c_attn`, whose order of rows "
                                          r"cannot be read off its shape"):
        apply_method(model, _lora(["W_q", "W_v"]))
    _assert_trains_its_count(model, _lora(["W_o", "W_up"]))  # what can be mapped still applies


def test_a_mixture_of_experts_mlp_is_refused_and_attention_still_maps(tiny_model):
    with pytest.raises(ConfigError, match="mixture-of-experts MLP has one such matrix per expert"):
        apply_method(tiny_model("mixtral"), _lora(["W_up"]))
    with pytest.raises(ConfigError, match=r"adapter_h goes after the output projection\(s\) \['W_o', 'W_down'\]"):
        apply_method(tiny_model("mixtral"), make_method_config("adapter_h", {"r": 2}))
    _assert_trains_its_count(tiny_model("mixtral"), _lora(["W_q", "W_v"]))


def test_a_model_with_no_known_matrix_is_refused_and_ft_still_applies(tiny_model):
    with pytest.raises(ConfigError, match=r"'mamba' is not in the table .* none of its blocks' modules .* "
                                          r"\(ft, bitfit, none\) still apply"):
        apply_method(tiny_model("mamba"), _lora(["W_q"]))
    model = tiny_model("mamba")
    apply_method(model, make_method_config("ft"))
    assert count_parameters(model)[0] == count_parameters(model)[1]


def test_a_config_that_contradicts_the_weights_is_refused(tiny_model):
    model = tiny_model("falcon")  # multi-query: [q | k | v] = 32 + 8 + 8 rows
    model.config.multi_query = False  # would mean 4 heads × [q | k | v] = 96 rows
    with pytest.raises(ConfigError, match="has 48 output rows, but the config's heads give the packing 4 × "):
        layout(model)


def test_bloom_refuses_what_its_slow_but_exact_forward_bypasses(tiny_model):
    model = tiny_model("bloom", pretraining_tp=2, slow_but_exact=True)
    with pytest.raises(ConfigError, match="slow_but_exact"):
        apply_method(model, make_method_config("adapter_h", {"r": 2}))
    _assert_trains_its_count(model, _lora(["W_q", "W_v"]))  # the fused query_key_value is called as a module


def test_the_layout_summary_names_the_family_and_its_weight_map(tiny_model):
    summary = layout(tiny_model("gpt_neox")).summary()
    assert summary["family"] == "gpt_neox" and summary["recognised_by"] == "model_type"
    assert summary["weights"]["W_q"] == "attention.query_key_value rows 0:8, 24:32, 48:56, 72:80 of 4 × [W_q 8 | W_k 8 | W_v 8]"
    assert summary["weights"]["W_o"] == "attention.dense" and summary["unmapped"] == {}
