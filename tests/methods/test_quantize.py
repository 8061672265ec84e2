"""QLoRA: LoRA on a base whose blocks' linear layers are stored in 4 bits (bitsandbytes Linear4bit, CPU)."""

from __future__ import annotations

import builtins
import math

import pytest
import torch

from four_bit import WIDE_ENOUGH, assert_computes_with_its_4bit_weights
from peftrepro.errors import ConfigError
from peftrepro.methods import apply_method, count_parameters, load_adapter, make_method_config, quantize, save_adapter
from peftrepro.methods.accounting import weight_report
from peftrepro.methods.quantize import INSTALL_HINT, constants_bytes, is_4bit, reads_back_as_stored
from peftrepro.methods.targets import block_linears, unwrapped

bnb = pytest.importorskip("bitsandbytes")

FAMILIES = ["gpt2", "llama", "bert"]
STORAGE = [("nf4", True), ("nf4", False), ("fp4", False)]


def qlora(quant_type: str = "nf4", double_quant: bool = True, compute_dtype: str = "fp32", **lora):
    options = {"weights": ["W_q", "W_v"], "r": 2, "dropout": 0.0,
               "quantize": {"quant_type": quant_type, "double_quant": double_quant, "compute_dtype": compute_dtype}}
    return make_method_config("lora", options | lora)


def layers(model):
    return [block.get_submodule(path) for block, path in block_linears(model)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quant_type,double_quant", STORAGE)
def test_every_block_linear_is_4bit_and_only_lora_trains(family, quant_type, double_quant, tiny_model):
    model = tiny_model(family, **WIDE_ENOUGH)
    ids = torch.randint(3, 90, (2, 7))
    total_before = count_parameters(model)[1]
    apply_method(model, qlora(quant_type, double_quant))
    quantized = [unwrapped(layer) for layer in layers(model)]
    assert quantized and all(isinstance(layer, bnb.nn.Linear4bit) for layer in quantized)
    assert {layer.weight.quant_state.quant_type for layer in quantized} == {quant_type}
    assert {layer.weight.quant_state.nested for layer in quantized} == {double_quant}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    assert count_parameters(model)[1] == total_before + sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert_computes_with_its_4bit_weights(model, tiny_model(family, **WIDE_ENOUGH), ids)  # LoRA's B = 0: the 4-bit base alone
    model(input_ids=ids).logits.sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())


def test_a_4bit_weight_reads_back_as_stored_and_a_misread_is_named(tiny_model, monkeypatch, caplog):
    model = tiny_model("llama", **WIDE_ENOUGH)
    assert apply_method(model, qlora()).facts()["quantized"]["misread"] == {}
    stored = [unwrapped(block.get_submodule(path)) for block, path in block_linears(model)[:3]]
    assert all(reads_back_as_stored(layer) for layer in stored)
    read = quantize.dequantized_weight
    monkeypatch.setattr(quantize, "dequantized_weight", lambda layer: read(layer).flip(0))  # other blocks' weights
    assert not any(reads_back_as_stored(layer) for layer in stored)
    monkeypatch.setattr(quantize, "reads_back_as_stored", lambda layer: layer.in_features != 32)
    facts = apply_method(tiny_model("llama"), qlora()).facts()["quantized"]  # 32 wide, but its MLP's down_proj
    assert facts["misread"] == {path: 3 for path in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                     "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj")}
    assert "reads 4-bit weights back wrongly" in caplog.text


def test_the_record_names_the_matrices_left_in_full_precision(tiny_model):
    assert apply_method(tiny_model("llama"), qlora()).facts()["quantized"]["not_quantized"] == {}
    model = tiny_model("mixtral")  # its experts' MLPs are 3-D parameters, not linear layers
    experts = {name.split(".", 3)[-1] for name, _ in model.named_parameters() if ".experts." in name}
    facts = apply_method(model, qlora()).facts()["quantized"]
    assert facts["quantized_layers"] == 4 * model.config.num_hidden_layers  # W_q, W_k, W_v, W_o
    assert experts and experts <= set(facts["not_quantized"])


@pytest.mark.parametrize("compute_dtype", ["fp32", "bf16"])
def test_forward_and_backward_in_either_compute_dtype(compute_dtype, tiny_model):
    model = tiny_model("llama")
    apply_method(model, qlora(compute_dtype=compute_dtype))
    assert {unwrapped(layer).compute_dtype for layer in layers(model)} == {getattr(torch, {"fp32": "float32",
                                                                                        "bf16": "bfloat16"}[compute_dtype])}
    loss = model(input_ids=torch.randint(3, 90, (2, 7))).logits.float().square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_stored_bytes_shrink_as_qlora_says(tiny_model):
    full = weight_report(tiny_model("llama"))
    reports = {}
    for quant_type, double_quant in STORAGE:
        model = tiny_model("llama")
        apply_method(model, qlora(quant_type, double_quant))
        reports[(quant_type, double_quant)] = weight_report(model)
        for layer in layers(model):
            weight = unwrapped(layer).weight
            assert weight.numel() * weight.element_size() == math.ceil(weight.quant_state.shape.numel() / 2)
    linear_weights = sum(unwrapped(layer).weight.quant_state.shape.numel() for layer in layers(model))
    # the block linears go from 4 bytes a weight to half a byte plus their constants
    saved = full["frozen_bytes"] + full["trainable_bytes"] - reports[("nf4", False)]["frozen_bytes"]  # base only
    assert saved == pytest.approx(linear_weights * (4 - 0.5), rel=0.05)
    assert reports[("nf4", False)]["frozen_bytes"] == reports[("fp4", False)]["frozen_bytes"]


def qlora_constants(weights: int, double_quant: bool) -> int:
    """QLoRA §3's constants in bytes: an fp32 absmax per 64 weights; under DQ an 8-bit one, their fp32
    mean, and an fp32 absmax per 256 of them; plus the lookup codes (4-bit: 16 values, 8-bit: 256)."""
    blocks_of_64 = math.ceil(weights / 64)
    codes = 16 * 4 + (256 * 4 if double_quant else 0)
    if not double_quant:
        return 4 * blocks_of_64 + codes
    return blocks_of_64 + 4 + 4 * math.ceil(blocks_of_64 / 256) + codes


@pytest.mark.parametrize("double_quant", [False, True])
def test_the_quantisation_constants_are_qloras(double_quant, tiny_model):
    model = tiny_model("gpt2")
    apply_method(model, qlora(double_quant=double_quant))
    for layer in layers(model):
        weight = unwrapped(layer).weight
        assert constants_bytes(weight) == qlora_constants(weight.quant_state.shape.numel(), double_quant)
    assert all(constants_bytes(p) == 0 for p in model.parameters() if getattr(p, "quant_state", None) is None)
    # per weight (the codes aside): 32/64 bits without DQ, 8/64 + 32/(64·256) with it (QLoRA §3: 0.5 vs 0.127)
    per_weight = {dq: (qlora_constants(64 * 256 * 1000, dq) - 16 * 4 - (1024 if dq else 0)) * 8 / (64 * 256 * 1000)
                  for dq in (False, True)}
    assert per_weight[False] == pytest.approx(0.5) and per_weight[True] == pytest.approx(0.127, abs=5e-4)


def test_a_4bit_base_refuses_to_merge(tiny_model):
    applied = apply_method(tiny_model("gpt2"), qlora())
    with pytest.raises(ConfigError, match="4-bit base .* cannot hold W0 \\+ s·BA"):
        applied.merge()


def test_a_run_that_merges_for_evaluation_is_refused_before_it_starts():
    config = qlora()
    with pytest.raises(ConfigError, match="set merge_for_eval=false"):
        config.check_run({"merge_for_eval": True})
    config.check_run({"merge_for_eval": False})
    make_method_config("lora", {}).check_run({"merge_for_eval": True})  # the full-precision base merges


def test_missing_bitsandbytes_is_one_line_naming_the_extra(monkeypatch, tiny_model):
    real_import = builtins.__import__

    def no_bitsandbytes(name, *args, **kwargs):
        if name.split(".")[0] == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    for attempt in (lambda: qlora().check_run({"merge_for_eval": False}),
                    lambda: apply_method(tiny_model("llama"), qlora())):
        with pytest.raises(ConfigError) as error:
            attempt()
        assert INSTALL_HINT in str(error.value) and "\n" not in str(error.value)


def test_save_load_round_trip_requantises_the_same_base(tiny_model, tmp_path):
    model = tiny_model("llama")
    applied = apply_method(model, qlora("fp4", False))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    ids = torch.randint(3, 90, (2, 7))
    expected = model(input_ids=ids).logits
    save_adapter(model, applied.config, tmp_path)
    fresh = tiny_model("llama")
    load_adapter(fresh, tmp_path)
    assert all(is_4bit(unwrapped(layer)) for layer in layers(fresh))
    assert torch.equal(fresh(input_ids=ids).logits, expected)


def test_equal_storage_written_two_ways_is_one_config():
    short = make_method_config("lora", {"quantize": {"quant_type": "nf4"}})
    spelled = make_method_config("lora", {"quantize": {"quant_type": "nf4", "double_quant": True,
                                                       "compute_dtype": "fp32", "blocksize": 64}})
    assert short.canonical() == spelled.canonical()
    assert short.canonical() != make_method_config("lora", {}).canonical()
