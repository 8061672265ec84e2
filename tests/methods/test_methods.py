"""The registry and the options of the methods: names, validation, clear errors (the behaviour of each
method on each family: test_families.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from peftrepro.errors import ConfigError
from peftrepro.methods import (
    METHODS,
    apply_method,
    count_parameters,
    load_adapter,
    make_method_config,
    save_adapter,
)

FAMILIES = ["gpt2", "llama", "bert"]
# small options so every method runs on the tiny models in milliseconds (every family and method:
# test_families.py)
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


def test_registry_names_the_papers_methods():
    # `none`: the zero-shot baseline, tested below; `peft_adapter`: a peft LoRA evaluated (test_interop.py)
    assert set(METHODS) == set(OPTIONS) | {"none", "peft_adapter"}


@pytest.mark.parametrize("family", FAMILIES)
def test_no_adaptation_freezes_everything_and_trains_nothing(family, tiny_model):
    model = tiny_model(family)
    before = model(input_ids=torch.tensor([[3, 4, 5]])).logits
    applied = apply_method(model, make_method_config("none"))
    assert count_parameters(model)[0] == 0 and not applied.config.trains
    torch.testing.assert_close(model(input_ids=torch.tensor([[3, 4, 5]])).logits, before, rtol=0, atol=0)


def test_load_rejects_a_checkpoint_of_another_shape(tiny_model, tmp_path):
    model = tiny_model("gpt2")
    applied = apply_method(model, make_method_config("lora", {"r": 2}))
    save_adapter(model, applied.config, tmp_path)
    other = tiny_model("llama")  # same method, different module names and shapes
    with pytest.raises(ConfigError, match="does not fit this model"):
        load_adapter(other, tmp_path)


@pytest.mark.parametrize("method,saved_in,loaded_in,older_version", [
    ("ft", torch.float32, torch.bfloat16, False),  # the base's own weights: saved in the base's dtype
    ("ft", torch.bfloat16, torch.float32, True),  # could be either; the message names both
    ("lora", torch.bfloat16, torch.bfloat16, True),  # LoRA factors in bf16: only an older version saved those
])
def test_load_names_the_dtype_it_expects_and_why(tiny_model, tmp_path, method, saved_in, loaded_in, older_version):
    model = tiny_model("gpt2")
    applied = apply_method(model, make_method_config(method, OPTIONS[method]))
    save_adapter(model, applied.config, tmp_path)
    weights = tmp_path / "adapter.safetensors"
    save_file({name: t.to(saved_in) for name, t in load_file(str(weights)).items()}, str(weights))
    with pytest.raises(ConfigError, match=f"is {saved_in} in the file") as error:
        load_adapter(tiny_model("gpt2").to(loaded_in), tmp_path)
    assert "`model.dtype`" in str(error.value) and ("trained again" in str(error.value)) == older_version


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


D, BLOCKS = 32, 3  # the tiny GPT-2: its biases by hand, per block and after the blocks
LINEAR_BIASES = 3 * D + D + 4 * D + D  # attn.c_attn (q|k|v), attn.c_proj, mlp.c_fc (4d), mlp.c_proj
NORM_BIASES = 2 * D  # ln_1, ln_2 (ln_f once more, after the blocks)


@pytest.mark.parametrize("layernorm_bias,expected", [
    (True, BLOCKS * (LINEAR_BIASES + NORM_BIASES) + D),
    (False, BLOCKS * LINEAR_BIASES),
])
def test_bitfit_trains_exactly_the_biases_zaken_et_al_name(tiny_gpt2, layernorm_bias, expected):
    apply_method(tiny_gpt2, make_method_config("bitfit", {"layernorm_bias": layernorm_bias}))
    assert count_parameters(tiny_gpt2)[0] == expected
    assert all(name.endswith(".bias") for name, p in tiny_gpt2.named_parameters() if p.requires_grad)


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
    ("magnitude_pruning", {"remaining": 1.5}, "method.remaining .* above 0 and at most 1"),
    ("movement_pruning", {"remaining": 0}, "method.remaining .* above 0 and at most 1"),
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
    with pytest.raises(ConfigError, match=r"does not exist in a .* model \(no such matrix in this family\); "
                                          r"available there: \["):
        apply_method(tiny_model(family), make_method_config("lora", {"weights": [weight]}))


def test_k_larger_than_model_is_rejected(tiny_gpt2):
    with pytest.raises(ConfigError, match="only 3 blocks"):
        apply_method(tiny_gpt2, make_method_config("ft_top", {"k": 4}))


def test_hydra_style_options_are_accepted():
    from omegaconf import OmegaConf
    options = OmegaConf.create({"name": "lora", "ranks": {"W_q": 4, "W_v": 4}, "weights": ["W_q"]})
    config = make_method_config("lora", options)
    assert config.rank_per_weight() == {"W_q": 4, "W_v": 4}
    assert isinstance(config.ranks, dict)
