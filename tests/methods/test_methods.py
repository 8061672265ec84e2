"""Behaviour shared by every method, table-driven over method × tiny GPT-2 / Llama / BERT."""

from __future__ import annotations

import pytest
import torch

from peftrepro.errors import ConfigError
from peftrepro.methods import (
    METHODS,
    apply_method,
    count_parameters,
    formula_params,
    load_adapter,
    make_method_config,
    save_adapter,
)

FAMILIES = ["gpt2", "llama", "bert"]
# small options so every method runs on the tiny models in milliseconds
OPTIONS = {
    "lora": {"weights": ["W_q", "W_v"], "r": 2, "dropout": 0.0},
    "adapter_h": {"r": 3},
    "adapter_l": {"r": 3},
    "prefix_layer": {"prefix_length": 2, "infix_length": 1},
    "prefix_embed": {"prefix_length": 2, "infix_length": 1},
    "prompt_tuning": {"prefix_length": 3},
    "ft": {},
    "ft_top": {"k": 2},
    "bitfit": {},
    "magnitude_pruning": {"remaining": 0.5},
    "movement_pruning": {"remaining": 0.5},
}
# methods that change no weight of the base: only new parameters train
ADDS_PARAMETERS = ["lora", "adapter_h", "adapter_l", "prefix_layer", "prefix_embed", "prompt_tuning"]
IDENTITY_AT_INIT = ["lora", "adapter_h", "adapter_l", "ft", "ft_top", "bitfit", "magnitude_pruning",
                    "movement_pruning"]
BIAS_FREE = {"llama"}


def _cases(methods):
    return [pytest.param(m, f, id=f"{m}-{f}") for m in methods for f in FAMILIES
            if not (m == "bitfit" and f in BIAS_FREE)]


def _ids(applied, batch=2):
    torch.manual_seed(1)
    real = torch.randint(3, 90, (batch, 6))
    prefix = torch.tensor(applied.prompt.prefix_ids, dtype=torch.long).expand(batch, -1)
    infix = torch.tensor(applied.prompt.infix_ids, dtype=torch.long).expand(batch, -1)
    return torch.cat([prefix, real, infix], dim=1)


def test_registry_names_the_papers_methods():
    assert set(METHODS) == set(OPTIONS) | {"none"}  # `none`: the zero-shot baseline, tested below


@pytest.mark.parametrize("family", FAMILIES)
def test_no_adaptation_freezes_everything_and_trains_nothing(family, tiny_model):
    model = tiny_model(family)
    before = model(input_ids=torch.tensor([[3, 4, 5]])).logits
    applied = apply_method(model, make_method_config("none"))
    assert count_parameters(model)[0] == 0 and not applied.config.trains
    torch.testing.assert_close(model(input_ids=torch.tensor([[3, 4, 5]])).logits, before, rtol=0, atol=0)


@pytest.mark.parametrize("method,family", _cases(IDENTITY_AT_INIT))
def test_identity_at_init(method, family, tiny_model):
    base = tiny_model(family)
    ids = torch.randint(3, 90, (2, 7))
    expected = base(input_ids=ids).logits
    applied = apply_method(base, make_method_config(method, OPTIONS[method]))
    torch.testing.assert_close(applied.model(input_ids=ids).logits, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,family", _cases(OPTIONS))
def test_trainable_count_equals_formula_and_only_method_params_train(method, family, tiny_model):
    model = tiny_model(family)
    base_names = {name for name, _ in model.named_parameters()}
    applied = apply_method(model, make_method_config(method, OPTIONS[method]))
    trainable, total = count_parameters(model)
    expected = formula_params(model, applied.config)
    if expected is None and method == "ft":  # no closed formula for this family: FT trains everything
        expected = total
    if expected is None and method == "bitfit":  # every bias vector of the base model
        expected = sum(p.numel() for n, p in tiny_model(family).named_parameters() if n.endswith(".bias"))
    assert expected is not None, f"no formula to check {method} on {family}"
    assert trainable == expected
    if method in ADDS_PARAMETERS:  # new parameters only; the base is frozen
        assert not any(p.requires_grad for n, p in model.named_parameters() if _is_base(n, base_names))


def _is_base(name: str, base_names: set[str]) -> bool:
    return name.replace(".base.", ".") in base_names


@pytest.mark.parametrize("method,family", _cases(OPTIONS))
def test_gradients_reach_only_trainable_parameters(method, family, tiny_model):
    model = tiny_model(family)
    applied = apply_method(model, make_method_config(method, OPTIONS[method]))
    model(input_ids=_ids(applied)).logits.sum().backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == parameter.requires_grad, name


@pytest.mark.parametrize("method,family", _cases(OPTIONS))
def test_save_load_round_trip_is_bit_exact(method, family, tiny_model, tmp_path):
    model = tiny_model(family)
    applied = apply_method(model, make_method_config(method, OPTIONS[method]))
    with torch.no_grad():  # move off the init so the round trip is not trivially zeros
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    ids = _ids(applied)
    expected = model(input_ids=ids).logits
    size = save_adapter(model, applied.config, tmp_path)
    assert size == (tmp_path / "adapter.safetensors").stat().st_size > 0

    fresh = tiny_model(family)
    reloaded = load_adapter(fresh, tmp_path)
    assert reloaded.prompt == applied.prompt
    saved = {n: p for n, p in model.named_parameters() if p.requires_grad}
    loaded = {n: p for n, p in fresh.named_parameters() if p.requires_grad}
    assert saved.keys() == loaded.keys()
    for name in saved:
        assert torch.equal(saved[name], loaded[name]), name
    assert torch.equal(fresh(input_ids=ids).logits, expected)


def test_load_rejects_a_checkpoint_of_another_shape(tiny_model, tmp_path):
    model = tiny_model("gpt2")
    applied = apply_method(model, make_method_config("lora", {"r": 2}))
    save_adapter(model, applied.config, tmp_path)
    other = tiny_model("llama")  # same method, different module names and shapes
    with pytest.raises(ConfigError, match="does not fit this model"):
        load_adapter(other, tmp_path)


def test_load_names_a_missing_directory(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="method.json"):
        load_adapter(tiny_model("gpt2"), tmp_path / "nowhere")


@pytest.mark.parametrize("method", ["adapter_h", "prefix_embed", "ft"])
def test_merge_is_lora_only(method, tiny_model):
    applied = apply_method(tiny_model("gpt2"), make_method_config(method, OPTIONS[method]))
    with pytest.raises(ConfigError, match="only for LoRA"):
        applied.merge()


def test_ft_top2_trains_last_two_blocks_only(tiny_gpt2):
    apply_method(tiny_gpt2, make_method_config("ft_top", {"k": 2}))
    trainable = {n.split(".")[2] for n, p in tiny_gpt2.named_parameters() if p.requires_grad}
    assert trainable == {"1", "2"}  # blocks h.1, h.2 of 3; no ln_f, wte, wpe


def test_bitfit_refuses_bias_free_llama(tiny_llama):
    with pytest.raises(ConfigError, match="no bias parameters"):
        apply_method(tiny_llama, make_method_config("bitfit", {}))


BAD_CONFIGS = [
    ("nope", {}, "unknown method 'nope'"),
    ("lora", {"weights": ["W_x"]}, "unknown weight name 'W_x'"),
    ("lora", {"r": 0}, "r must be an integer >= 1"),
    ("lora", {"ranks": {"W_q": 0}}, "rank of W_q must be an integer >= 1"),
    ("lora", {"rank": 4}, r"unknown option\(s\) \['rank'\]"),
    ("lora", {"init": "xavier"}, "init must be one of"),
    ("adapter_h", {"r": 0}, "r must be an integer >= 1"),
    ("adapter_l", {"nonlinearity": "tanh"}, "nonlinearity must be one of"),
    ("prefix_layer", {"prefix_length": 0, "infix_length": 0}, "prefix_length \\+ infix_length must be >= 1"),
    ("prefix_embed", {"prefix_length": -1}, "prefix_length must be an integer >= 0"),
    ("prompt_tuning", {"infix_length": 2}, "infix_length must be 0"),
    ("prompt_tuning", {"prefix_length": 0}, "prefix_length \\+ infix_length must be >= 1"),
    ("magnitude_pruning", {"remaining": 1.0}, "method.remaining .* strictly between 0 and 1"),
    ("movement_pruning", {"remaining": 0}, "method.remaining .* strictly between 0 and 1"),
    ("movement_pruning", {"warmup": 0.5, "cooldown": 0.5}, "leaves no step to prune in"),
    ("magnitude_pruning", {"update_every": 0}, "update_every must be an integer >= 1"),
    ("lora", {"quantize": {"quant_type": "int4"}}, "quantize.quant_type must be one of"),
    ("lora", {"quantize": {"bits": 4}}, r"unknown quantize option\(s\) \['bits'\]"),
    ("ft_top", {"k": 0}, "k must be an integer >= 1"),
]


@pytest.mark.parametrize("name,options,message", BAD_CONFIGS, ids=[f"{c[0]}-{c[2][:20]}" for c in BAD_CONFIGS])
def test_bad_config_raises_one_clear_error(name, options, message):
    with pytest.raises(ConfigError, match=message):
        make_method_config(name, options)


@pytest.mark.parametrize("family,weight", [("gpt2", "W_gate"), ("bert", "W_gate")])
def test_weight_missing_from_architecture_lists_available(family, weight, tiny_model):
    with pytest.raises(ConfigError, match=r"does not exist in a .* model; available there: \["):
        apply_method(tiny_model(family), make_method_config("lora", {"weights": [weight]}))


def test_k_larger_than_model_is_rejected(tiny_gpt2):
    with pytest.raises(ConfigError, match="only 3 blocks"):
        apply_method(tiny_gpt2, make_method_config("ft_top", {"k": 4}))


def test_unknown_architecture_lists_supported():
    from transformers import OPTConfig, OPTForCausalLM
    model = OPTForCausalLM(OPTConfig(hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                                     vocab_size=50, word_embed_proj_dim=16))
    with pytest.raises(ConfigError, match=r"'opt' is not supported .* \['bert', 'gpt2', 'llama', 'roberta'\]"):
        apply_method(model, make_method_config("lora", {}))


def test_hydra_style_options_are_accepted():
    from omegaconf import OmegaConf
    options = OmegaConf.create({"name": "lora", "ranks": {"W_q": 4, "W_v": 4}, "weights": ["W_q"]})
    config = make_method_config("lora", options)
    assert config.rank_per_weight() == {"W_q": 4, "W_v": 4}
    assert isinstance(config.ranks, dict)
