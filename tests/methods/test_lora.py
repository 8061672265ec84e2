"""LoRA specifics: merge semantics, GPT-2's fused c_attn, per-weight ranks, parity with HF peft."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftrepro.methods import apply_method, make_method_config
from peftrepro.methods.lora import LoRAModule

WEIGHT_SETS = [["W_q", "W_v"], ["W_q", "W_k", "W_v", "W_o"], ["W_k"], ["W_up", "W_down"]]


def _randomise_lora(model: nn.Module, seed: int = 0) -> None:
    """B is zero at init, which would make every comparison trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("weights", WEIGHT_SETS, ids=lambda w: "+".join(w))
def test_merged_equals_unmerged_equals_merge_and_unload(family, weights, tiny_model):
    model = tiny_model(family)
    applied = apply_method(model, make_method_config("lora", {"weights": weights, "r": 2, "dropout": 0.0}))
    _randomise_lora(model)
    ids = torch.randint(3, 90, (2, 7))
    unmerged = model(input_ids=ids).logits
    applied.merge()
    applied.merge()  # idempotent
    torch.testing.assert_close(model(input_ids=ids).logits, unmerged, rtol=0, atol=1e-5)
    applied.unmerge()
    torch.testing.assert_close(model(input_ids=ids).logits, unmerged, rtol=0, atol=1e-5)
    plain = applied.merge_and_unload()
    assert not any(isinstance(m, LoRAModule) for m in plain.modules())
    assert not any("lora_" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(plain(input_ids=ids).logits, unmerged, rtol=0, atol=1e-5)


def test_fused_c_attn_equals_lora_on_split_q_and_v_by_hand(tiny_gpt2):
    block = tiny_gpt2.transformer.h[0]
    c_attn = block.attn.c_attn
    d = tiny_gpt2.config.n_embd
    W, b = c_attn.weight.detach().clone(), c_attn.bias.detach().clone()  # Conv1D: W is d × 3d
    applied = apply_method(tiny_gpt2, make_method_config(
        "lora", {"ranks": {"W_q": 2, "W_v": 3}, "alpha": 6, "dropout": 0.0}))
    _randomise_lora(tiny_gpt2)
    wrapper = block.attn.c_attn
    x = torch.randn(2, 5, d)
    A_q, B_q = wrapper.lora_A["W_q"], wrapper.lora_B["W_q"]
    A_v, B_v = wrapper.lora_A["W_v"], wrapper.lora_B["W_v"]
    q = x @ W[:, :d] + b[:d] + (6 / 2) * x @ A_q.T @ B_q.T
    k = x @ W[:, d:2 * d] + b[d:2 * d]  # W_k untouched
    v = x @ W[:, 2 * d:] + b[2 * d:] + (6 / 3) * x @ A_v.T @ B_v.T
    torch.testing.assert_close(wrapper(x), torch.cat([q, k, v], dim=-1), rtol=0, atol=1e-5)
    assert set(wrapper.lora_A) == {"W_q", "W_v"}  # no parameters for W_k
    assert (A_q.shape, B_q.shape, A_v.shape, B_v.shape) == ((2, d), (d, 2), (3, d), (d, 3))
    applied.merge()  # and the merged Conv1D weight is W + ΔWᵀ per slice
    torch.testing.assert_close(wrapper.base(x), torch.cat([q, k, v], dim=-1), rtol=0, atol=1e-5)


# spellings of one configuration (reuse.equivalence_key treats them as one run, so they must train alike)
SAME_LORA = [{"weights": ["W_q", "W_v"], "r": 2}, {"weights": ["W_v", "W_q"], "r": 2},
             {"ranks": {"W_v": 2, "W_q": 2}}]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_order_weights_are_named_in_does_not_change_the_initial_factors(family, tiny_model):
    initial = []
    for options in SAME_LORA:
        model = tiny_model(family)
        torch.manual_seed(0)
        apply_method(model, make_method_config("lora", {**options, "dropout": 0.0}))
        initial.append({name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name})
    for other in initial[1:]:
        assert other.keys() == initial[0].keys()
        assert all(torch.equal(other[name], initial[0][name]) for name in initial[0])


def test_init_b_zero_and_a_follows_the_configured_init(tiny_llama):
    apply_method(tiny_llama, make_method_config("lora", {"r": 4, "init": "gaussian"}))
    wrapper = tiny_llama.model.layers[0].self_attn.q_proj
    assert torch.count_nonzero(wrapper.lora_B["W_q"]) == 0
    assert abs(wrapper.lora_A["W_q"].std().item() - 1 / 4) < 0.05  # N(0, 1/r)


def test_dropout_acts_on_the_lora_input_only(tiny_llama):
    applied = apply_method(tiny_llama, make_method_config("lora", {"r": 2, "dropout": 0.5}))
    _randomise_lora(tiny_llama)
    wrapper = tiny_llama.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 16, 32)
    wrapper.train()
    torch.manual_seed(0)
    noisy = wrapper(x)
    torch.manual_seed(0)
    kept = nn.functional.dropout(x, 0.5, training=True)
    expected = wrapper.base(x) + (32 / 2) * kept @ wrapper.lora_A["W_q"].T @ wrapper.lora_B["W_q"].T
    torch.testing.assert_close(noisy, expected, rtol=1e-5, atol=1e-5)
    assert applied.config.dropout == 0.5


def test_parity_with_hf_peft_on_llama(tiny_model):
    peft = pytest.importorskip("peft")
    ours = tiny_model("llama")
    theirs = tiny_model("llama")
    apply_method(ours, make_method_config("lora", {"weights": ["W_q", "W_v"], "r": 4, "alpha": 8, "dropout": 0.0}))
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                         target_modules=["q_proj", "v_proj"]))
    _randomise_lora(ours)
    pairs = []
    for index, layer in enumerate(ours.model.layers):
        for ours_module, weight, name in ((layer.self_attn.q_proj, "W_q", "q_proj"),
                                          (layer.self_attn.v_proj, "W_v", "v_proj")):
            peft_module = getattr(theirs.base_model.model.model.layers[index].self_attn, name)
            with torch.no_grad():
                peft_module.lora_A["default"].weight.copy_(ours_module.lora_A[weight])
                peft_module.lora_B["default"].weight.copy_(ours_module.lora_B[weight])
            pairs.append((ours_module.lora_A[weight], peft_module.lora_A["default"].weight))
            pairs.append((ours_module.lora_B[weight], peft_module.lora_B["default"].weight))
    ids = torch.randint(3, 90, (2, 9))
    ours_logits, theirs_logits = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
    torch.testing.assert_close(ours_logits, theirs_logits, rtol=1e-5, atol=1e-5)
    ours_logits.pow(2).mean().backward()
    theirs_logits.pow(2).mean().backward()
    for mine, reference in pairs:
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-4, atol=1e-6)


def test_frozen_base_gets_no_gradient(tiny_gpt2):
    apply_method(tiny_gpt2, make_method_config("lora", {"r": 2}))
    tiny_gpt2(input_ids=torch.randint(3, 90, (1, 5))).logits.sum().backward()
    c_attn = tiny_gpt2.transformer.h[0].attn.c_attn
    assert c_attn.base.weight.grad is None and c_attn.lora_A["W_q"].grad is not None
