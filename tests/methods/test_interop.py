"""Adapters the ecosystem loads: the suite's LoRA (and PreEmbed, prompt tuning, QLoRA) to peft and back,
with equal logits; merged checkpoints of LoRA and of pruned models.

suite -> peft: `PeftModel.from_pretrained(base, OUT)` gives the suite's logits (fp32, 1e-5) on every
causal family, fused projections included (one peft LoRA per module, each matrix's B on its rows).
peft -> suite: method `peft_adapter` gives peft's logits. Bad adapters get one clear error.
"""

from __future__ import annotations

import pytest
import torch

from peftrepro.errors import ConfigError
from peftrepro.methods import apply_method, count_parameters, make_method_config, weight_report
from peftrepro.methods.interop import PEFT_WEIGHTS_FILE, check_exportable, export_peft, merged_model
from peftrepro.methods.pruning import SCORE_RULES
from peftrepro.methods.quantize import QuantizeConfig, quantize_block_linears
from peftrepro.methods.targets import layout
from tiny_models import CAUSAL_FAMILIES, FUSED_QKV

peft = pytest.importorskip("peft")

IDS = torch.tensor([[5, 17, 42, 8, 61, 3, 29]])


def _randomise(parameters, seed: int = 0, scale: float = 0.2) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def _suite_lora(model, equal_ranks: bool):
    weights = list(layout(model).weights)
    ranks = {weight: 2 if equal_ranks else 1 + index % 3 for index, weight in enumerate(weights)}
    applied = apply_method(model, make_method_config("lora", {"ranks": ranks, "alpha": 6, "dropout": 0.0}))
    _randomise(p for p in model.parameters() if p.requires_grad)
    return applied


# equal ranks keep peft's scaling, unequal ones fold it into B: a difference for fused modules only
CASES = [pytest.param(family, False, id=f"{family}-unequal-ranks") for family in CAUSAL_FAMILIES] + [
    pytest.param(family, True, id=f"{family}-equal-ranks") for family in CAUSAL_FAMILIES if family in FUSED_QKV]


@pytest.mark.parametrize("family,equal_ranks", CASES)
def test_lora_exported_to_peft_loads_with_the_suites_logits(family, equal_ranks, tiny_model, tmp_path):
    model = tiny_model(family)
    applied = _suite_lora(model, equal_ranks)
    expected = model(input_ids=IDS).logits
    export_peft(applied, tmp_path, base_model=None)
    assert {"adapter_config.json", PEFT_WEIGHTS_FILE} <= {path.name for path in tmp_path.iterdir()}
    loaded = peft.PeftModel.from_pretrained(tiny_model(family), str(tmp_path)).eval()
    torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method,options", [("prefix_embed", {"prefix_length": 3, "infix_length": 0}),
                                            ("prompt_tuning", {"prefix_length": 3})], ids=["prefix_embed", "prompt_tuning"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "opt"])
def test_prefix_embed_without_infix_exports_as_prompt_tuning(family, method, options, tiny_model, tmp_path):
    model = tiny_model(family)
    applied = apply_method(model, make_method_config(method, options))
    _randomise([model.get_input_embeddings().virtual])
    with_prefix = torch.cat([torch.tensor([applied.prompt.prefix_ids]), IDS], dim=1)
    expected = model(input_ids=with_prefix).logits[:, 3:]
    export_peft(applied, tmp_path, base_model=None)
    loaded = peft.PeftModel.from_pretrained(tiny_model(family), str(tmp_path)).eval()
    torch.testing.assert_close(loaded(input_ids=IDS).logits[:, 3:], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method,options,message", [
    ("prefix_embed", {"prefix_length": 2, "infix_length": 1}, r"with infix tokens .*nor can --format merged"),
    ("adapter_h", {"r": 2}, r"peft cannot express method 'adapter_h'; nor can --format merged"),
    ("prefix_layer", {"prefix_length": 2}, r"peft cannot express method 'prefix_layer'; nor can --format merged"),
    ("ft", {}, r"peft cannot express method 'ft'; use --format merged"),
    ("bitfit", {}, r"peft cannot express method 'bitfit'; use --format merged"),
])
def test_a_method_peft_cannot_express_is_one_clear_error(method, options, message):
    with pytest.raises(ConfigError, match=message):
        check_exportable(make_method_config(method, options), "peft")


def test_merged_is_refused_where_the_update_does_not_fold():
    with pytest.raises(ConfigError, match=r"'adapter_l' .* no merged checkpoint"):
        check_exportable(make_method_config("adapter_l"), "merged")
    with pytest.raises(ConfigError, match=r"QLoRA\) keeps W0 in 4 bits.*--format peft expresses it"):
        check_exportable(make_method_config("lora", {"quantize": {"quant_type": "nf4"}}), "merged")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_qlora_exports_to_peft_for_its_4bit_base(family, tiny_model, tmp_path):
    pytest.importorskip("bitsandbytes")
    model = tiny_model(family)
    options = {"ranks": {"W_q": 2, "W_v": 1}, "alpha": 6, "dropout": 0.0, "quantize": {"quant_type": "nf4"}}
    applied = apply_method(model, make_method_config("lora", options))
    _randomise(p for p in model.parameters() if p.requires_grad)
    expected = model(input_ids=IDS).logits
    export_peft(applied, tmp_path, base_model=None)
    base = tiny_model(family)
    quantize_block_linears(base, QuantizeConfig(quant_type="nf4"))  # as bitsandbytes' 4-bit loading stores it
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path)).eval()
    torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_pruned_model_merges_into_plain_weights_with_its_zeros(family, tiny_model):
    model = tiny_model(family)
    applied = apply_method(model, make_method_config("movement_pruning", {"remaining": 0.5}))
    _randomise(p for p in model.parameters() if p.requires_grad)
    applied.after_step(10, 10)  # the final masks
    expected = model(input_ids=IDS).logits
    merged = merged_model(applied)
    assert merged.state_dict().keys() == tiny_model(family).state_dict().keys()  # what from_pretrained reads
    score_buffers = {name for rule in SCORE_RULES.values() for name in rule}  # Adam's moments too
    assert not any(any(hasattr(module, name) for name in score_buffers) or module._forward_pre_hooks
                   for module in merged.modules())
    torch.testing.assert_close(merged(input_ids=IDS).logits, expected, rtol=0, atol=0)
    assert weight_report(merged)["block_linear_density"] == 0.5


# ----------------------------------------------------------------------------- peft -> suite


def _peft_adapter(family, tiny_model, directory, **options):
    """A peft LoRA on every module of the family that holds a paper matrix, saved by peft."""
    modules = sorted({target.module for target in layout(tiny_model(family)).weights.values()})
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=modules,
                             fan_in_fan_out=family == "gpt2", **options)
    peft_model = peft.get_peft_model(tiny_model(family), config)
    _randomise(p for n, p in peft_model.named_parameters() if "lora_" in n)
    peft_model.save_pretrained(str(directory))
    return peft_model.eval()


def _imported(family, tiny_model, directory, **options):
    model = tiny_model(family)
    applied = apply_method(model, make_method_config("peft_adapter", {"path": str(directory), **options}))
    return model, applied


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_a_peft_lora_imports_with_peft_logits(family, tiny_model, tmp_path):
    reference = _peft_adapter(family, tiny_model, tmp_path)
    model, applied = _imported(family, tiny_model, tmp_path)
    torch.testing.assert_close(model(input_ids=IDS).logits, reference(input_ids=IDS).logits, rtol=0, atol=1e-5)
    assert count_parameters(model)[0] == 0 and not applied.config.trains  # evaluated as it is
    assert len(applied.provenance["sha256"]) == 64
    applied.merge()  # evaluation merges it, as any LoRA
    torch.testing.assert_close(model(input_ids=IDS).logits, reference(input_ids=IDS).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("options", [{"use_rslora": True}, {"layers_to_transform": [1]},
                                     {"rank_pattern": {"mlp.c_fc": 2}, "alpha_pattern": {"attn.c_proj": 3}}],
                         ids=["rslora", "some-layers", "patterns"])
def test_peft_scalings_patterns_and_layer_subsets_import_exactly(options, tiny_model, tmp_path):
    reference = _peft_adapter("gpt2", tiny_model, tmp_path, **options)
    model, _ = _imported("gpt2", tiny_model, tmp_path)
    torch.testing.assert_close(model(input_ids=IDS).logits, reference(input_ids=IDS).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "falcon-kv-groups", "phi3"])
def test_suite_to_peft_to_suite_keeps_the_logits(family, tiny_model, tmp_path):
    model = tiny_model(family)
    applied = _suite_lora(model, equal_ranks=False)
    expected = model(input_ids=IDS).logits
    export_peft(applied, tmp_path, base_model=None)
    back, _ = _imported(family, tiny_model, tmp_path)
    torch.testing.assert_close(back(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)


def test_an_adapter_for_another_shape_is_refused(tiny_model, tmp_path):
    _peft_adapter("gpt_neox", tiny_model, tmp_path)
    bigger = tiny_model("gpt_neox", intermediate_size=128)
    with pytest.raises(ConfigError, match=r"does not fit this model: .*mlp\.dense_.* another base model"):
        apply_method(bigger, make_method_config("peft_adapter", {"path": str(tmp_path)}))


def test_an_adapter_for_another_family_is_refused(tiny_model, tmp_path):
    _peft_adapter("gpt2", tiny_model, tmp_path)
    with pytest.raises(ConfigError, match=r"adapts `transformer\.h\.0\.attn\.c_attn`, which is not in this model's "
                                          r"blocks `model\.layers\.<i>`"):
        _imported("llama", tiny_model, tmp_path)


def test_an_adapter_for_another_base_model_name_is_refused_unless_told(tiny_model, tmp_path):
    _peft_adapter("llama", tiny_model, tmp_path)
    config = (tmp_path / "adapter_config.json")
    config.write_text(config.read_text().replace('"base_model_name_or_path": null',
                                                 '"base_model_name_or_path": "org/other-model"'))
    model = tiny_model("llama")
    model.name_or_path = "/models/my-llama"
    with pytest.raises(ConfigError, match=r"adapter for base model 'org/other-model', but the run loaded "
                                          r"'/models/my-llama'.*method\.check_base=false"):
        apply_method(model, make_method_config("peft_adapter", {"path": str(tmp_path)}))
    apply_method(model, make_method_config("peft_adapter", {"path": str(tmp_path), "check_base": False}))


@pytest.mark.parametrize("options,message", [({"use_dora": True}, "DoRA"), ({"bias": "lora_only"}, "trained biases"),
                                             ({"modules_to_save": ["lm_head"]}, "modules_to_save")])
def test_what_the_suites_lora_cannot_hold_is_refused(options, message, tiny_model, tmp_path):
    _peft_adapter("llama", tiny_model, tmp_path, **options)
    with pytest.raises(ConfigError, match=rf"the suite's LoRA cannot hold .*{message}"):
        _imported("llama", tiny_model, tmp_path)


def test_an_adapter_of_another_peft_method_is_refused(tiny_model, tmp_path):
    model = tiny_model("llama")
    export_peft(apply_method(model, make_method_config("prefix_embed", {"prefix_length": 2, "infix_length": 0})),
                tmp_path, base_model=None)
    with pytest.raises(ConfigError, match="loads LoRA adapters; .* holds a PROMPT_TUNING adapter"):
        _imported("llama", tiny_model, tmp_path)


def test_a_missing_adapter_directory_is_refused_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match="adapter_config.json does not exist"):
        make_method_config("peft_adapter", {"path": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="needs method.path"):
        make_method_config("peft_adapter", {})
