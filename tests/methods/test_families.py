"""Every method on every layout, table-driven over family × method (tiny random models, no download).

For each tiny model of tests/tiny_models.py and each method: it applies (BitFit on a bias-free model
is refused as not applicable); it trains exactly the count its definition gives on the module shapes;
the methods that start as the identity leave the logits unchanged; training steps change its own
parameters and nothing else; greedy generation with the KV cache equals generation without; its
checkpoint reloads bit for bit. LoRA: merged = unmerged logits, and unmerge restores every frozen
weight bit for bit. Fused projections: the rows each paper matrix owns, checked against the model's
own split of q, k and v (the keys and values it caches) and of Phi-3's gate and up.

The methods beyond the LoRA paper's (QLoRA, prompt tuning, magnitude and movement pruning) run the
same checks, and: QLoRA stores every linear layer of the blocks in 4 bits; pruning keeps its share of
every one of them. Their own tests (test_quantize.py, test_pruning.py, test_prefix.py) cover them in
depth on GPT-2, Llama and BERT, so here only a few layouts are in the default suite, the rest slow.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from four_bit import WIDE_ENOUGH, assert_computes_with_its_4bit_weights
from peftrepro.errors import ConfigError, NotApplicableError
from peftrepro.methods import (
    apply_method,
    count_parameters,
    formula_params,
    load_adapter,
    make_method_config,
    save_adapter,
    weight_report,
)
from peftrepro.methods.targets import block_linears, blocks, layout, module_shape, unwrapped
from tiny_models import BIAS_FREE, CAUSAL_FAMILIES, FAMILIES, FUSED_GATE_UP, FUSED_QKV, UNNAMED

PRUNING = ["magnitude_pruning", "movement_pruning"]
# beyond the LoRA paper's methods; "qlora" is LoRA with `quantize` (needs bitsandbytes)
OTHERS = ["qlora", "prompt_tuning", *PRUNING]
METHODS = ["lora", "adapter_h", "adapter_l", "prefix_layer", "prefix_embed", "ft", "ft_top", "bitfit", *OTHERS]
IDENTITY_AT_INIT = ["lora", "adapter_h", "adapter_l", "ft", "ft_top", "bitfit", *PRUNING]
ADDS_PARAMETERS = ["lora", "adapter_h", "adapter_l", "prefix_layer", "prefix_embed", "qlora",
                   "prompt_tuning"]  # the base stays frozen
SMALL = {"adapter_h": {"r": 3}, "adapter_l": {"r": 3}, "prefix_layer": {"prefix_length": 2, "infix_length": 1},
         "prefix_embed": {"prefix_length": 2, "infix_length": 1}, "ft_top": {"k": 2},
         "prompt_tuning": {"prefix_length": 2}, **{method: {"remaining": 0.5} for method in PRUNING}}
# the layouts on which OTHERS run in the default suite: a fused Conv1D [q|k|v], grouped-query attention
# with a gated MLP, and fused [q|k|v] and [gate|up] under grouped-query attention
OTHERS_BY_DEFAULT = ["gpt2", "llama", "phi3"]


def _cases(methods: list[str], families: list[str]) -> list:
    """(method, family) for the named families, then the unnamed ones (slow: `make test-full`)."""
    named = [pytest.param(method, family, id=f"{method}-{family}", marks=_slow_unless(
                 method not in OTHERS or family in OTHERS_BY_DEFAULT))
             for method in methods for family in families if not (method == "bitfit" and family in BIAS_FREE)]
    return named + [pytest.param(method, family, id=f"{method}-{family}", marks=pytest.mark.slow)
                    for method in methods for family in UNNAMED]


def _slow_unless(by_default: bool) -> tuple:
    return () if by_default else (pytest.mark.slow,)


def _families(families: list[str]) -> list:
    return families + [pytest.param(family, marks=pytest.mark.slow) for family in UNNAMED]


def _apply(model, method: str, family: str):
    """`method` with small options; LoRA on every matrix the family has, each at its own rank.

    A family the tests do not name may lack what a method needs (a mixture-of-experts MLP has no
    W_down for an adapter, a bias-free model nothing for BitFit): there the method must be refused
    with one clear error, and the checks have nothing to check."""
    options = SMALL.get(method, {})
    if method in ("lora", "qlora"):
        ranks = {weight: 1 + index % 3 for index, weight in enumerate(_mapped(model))}
        options = {"ranks": ranks, "dropout": 0.0}
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
        method, options = "lora", {**options, "quantize": {"quant_type": "nf4", "double_quant": True}}
    try:
        return apply_method(model, make_method_config(method, options))
    except ConfigError as error:
        if family in UNNAMED:
            pytest.skip(f"refused, clearly: {error}")
        raise


def _mapped(model) -> list[str]:
    try:
        return list(layout(model).weights)
    except ConfigError:  # nothing mappable: apply_method says so
        return ["W_q"]


def _ids(applied, batch: int = 2, length: int = 6, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    real = torch.randint(3, 90, (batch, length), generator=generator)
    prefix = torch.tensor(applied.prompt.prefix_ids, dtype=torch.long).expand(batch, -1)
    infix = torch.tensor(applied.prompt.infix_ids, dtype=torch.long).expand(batch, -1)
    return torch.cat([prefix, real, infix], dim=1)


def _perturb_trainable(model, scale: float = 0.05, seed: int = 0) -> None:
    """Move the method's parameters off their init (LoRA's B = 0 would make comparisons trivial)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


@pytest.mark.parametrize("method,family", _cases(METHODS, FAMILIES))
def test_trains_the_count_its_definition_gives(method, family, tiny_model):
    model = tiny_model(family)
    base_names = {name for name, _ in model.named_parameters()}
    applied = _apply(model, method, family)
    trainable, _ = count_parameters(model)
    assert trainable == formula_params(model, applied.config) > 0
    if method in ADDS_PARAMETERS:
        frozen_base = [name for name, p in model.named_parameters()
                       if name.replace(".base.", ".") in base_names and p.requires_grad]
        assert not frozen_base


@pytest.mark.parametrize("family", BIAS_FREE)
def test_bitfit_is_not_applicable_to_a_bias_free_family(family, tiny_model):
    with pytest.raises(NotApplicableError, match="no bias parameters"):
        _apply(tiny_model(family), "bitfit", family)


@pytest.mark.parametrize("method,family", _cases(IDENTITY_AT_INIT, FAMILIES))
def test_identity_at_init(method, family, tiny_model):
    model = tiny_model(family)
    ids = torch.randint(3, 90, (2, 7))
    expected = model(input_ids=ids).logits
    _apply(model, method, family)
    torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,family", _cases(METHODS, FAMILIES))
def test_training_changes_its_own_parameters_and_nothing_else(method, family, tiny_model):
    model = tiny_model(family)
    applied = _apply(model, method, family)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(trainable.values(), lr=1e-2)
    model.train()
    ids = _ids(applied)
    targets = torch.randint(3, 90, ids.shape, generator=torch.Generator().manual_seed(2))
    for _ in range(2):  # LoRA's A first moves at step 2 (B = 0 at step 1)
        loss = F.cross_entropy(model(input_ids=ids).logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        moved = not torch.equal(parameter, before[name])
        assert moved == (name in trainable), f"{name} {'moved' if moved else 'did not move'}"


@pytest.mark.parametrize("method,family", _cases(METHODS, CAUSAL_FAMILIES))
def test_generation_with_the_kv_cache_equals_without(method, family, tiny_model):
    model = tiny_model(family)
    applied = _apply(model, method, family)
    _perturb_trainable(model)
    ids = _ids(applied, batch=1)
    runs = [model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                           use_cache=use_cache, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
            for use_cache in (True, False)]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    torch.testing.assert_close(torch.stack(runs[0].scores), torch.stack(runs[1].scores), rtol=0, atol=1e-4)


@pytest.mark.parametrize("method,family", _cases(METHODS, FAMILIES))
def test_checkpoint_round_trip_is_bit_exact(method, family, tiny_model, tmp_path):
    model = tiny_model(family)
    applied = _apply(model, method, family)
    _perturb_trainable(model)
    if applied.after_step:  # pruning: to its final masks, which the checkpoint holds too
        applied.after_step(1, 1)
    ids = _ids(applied)
    expected = model(input_ids=ids).logits
    assert save_adapter(model, applied.config, tmp_path) == (tmp_path / "adapter.safetensors").stat().st_size

    fresh = tiny_model(family)
    reloaded = load_adapter(fresh, tmp_path)
    assert reloaded.prompt == applied.prompt
    saved = {n: p for n, p in model.named_parameters() if p.requires_grad}
    loaded = {n: p for n, p in fresh.named_parameters() if p.requires_grad}
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[name], loaded[name]) for name in saved)
    assert torch.equal(fresh(input_ids=ids).logits, expected)


# ----------------------------------------------------------------------------- QLoRA and pruning


@pytest.mark.parametrize("method,family", _cases(["qlora"], FAMILIES))
def test_qlora_stores_every_linear_layer_of_the_blocks_in_4_bits(method, family, tiny_model):
    model = tiny_model(family, **WIDE_ENOUGH)
    _apply(model, method, family)
    layers = [unwrapped(block.get_submodule(path)) for block, path in block_linears(model)]
    assert len(layers) == len(blocks(model)) * len(layout(model).linear_modules)
    assert all(layer.weight.quant_state is not None for layer in layers)
    assert_computes_with_its_4bit_weights(model, tiny_model(family, **WIDE_ENOUGH), torch.randint(3, 90, (2, 7)))


@pytest.mark.parametrize("method,family", _cases(PRUNING, FAMILIES))
def test_pruning_keeps_its_share_of_every_linear_layer_of_the_blocks(method, family, tiny_model):
    model = tiny_model(family)
    applied = _apply(model, method, family)
    _perturb_trainable(model)
    applied.after_step(1, 1)  # the last step: the final share
    layers = [block.get_submodule(path) for block, path in block_linears(model)]
    assert applied.is_final() and applied.facts()["pruning"]["pruned_layers"] == len(layers) > 0
    for layer in layers:
        assert int(layer.weight_mask.sum()) == round(0.5 * layer.weight_mask.numel())
    assert weight_report(model)["block_linear_density"] == pytest.approx(0.5, abs=0.01)


# ----------------------------------------------------------------------------- LoRA merging


@pytest.mark.parametrize("family", _families(FAMILIES))
def test_lora_merged_equals_unmerged_and_unmerge_restores_every_weight_bit_for_bit(family, tiny_model):
    model = tiny_model(family)
    applied = _apply(model, "lora", family)
    _perturb_trainable(model, scale=0.5)
    ids = torch.randint(3, 90, (2, 7))
    unmerged = model(input_ids=ids).logits
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    for _ in range(10):  # evaluation merges and unmerges once per epoch
        applied.merge()
        applied.merge()  # idempotent
        torch.testing.assert_close(model(input_ids=ids).logits, unmerged, rtol=0, atol=1e-4)
        applied.unmerge()
        applied.unmerge()
    changed = [name for name, p in model.named_parameters() if name in frozen and not torch.equal(p, frozen[name])]
    assert not changed
    assert torch.equal(model(input_ids=ids).logits, unmerged)
    plain = applied.merge_and_unload()
    assert not any("lora_" in name for name, _ in plain.named_parameters())
    torch.testing.assert_close(plain(input_ids=ids).logits, unmerged, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- fused projections


def _cached_keys_values(model, ids):
    """Layer 0's keys and values as the model itself split them from its fused projection."""
    cache = model(input_ids=ids, use_cache=True).past_key_values
    return cache.layers[0].keys, cache.layers[0].values


def _every_head_changed(before: torch.Tensor, after: torch.Tensor) -> bool:
    """(batch, heads, seq, head_dim): some entry of every head differs."""
    return bool(((after - before).abs().amax(dim=(0, 2, 3)) > 0).all())


def _with_lora_on(family, weight, tiny_model):
    model = tiny_model(family)
    apply_method(model, make_method_config("lora", {"ranks": {weight: 2}, "dropout": 0.0}))
    _perturb_trainable(model, scale=0.5)
    return model


@pytest.mark.parametrize("family", FUSED_QKV)
def test_fused_qkv_each_matrix_owns_exactly_its_rows(family, tiny_model):
    """The model's own split of q, k, v (the keys and values it caches) says which rows LoRA touched:
    W_q leaves every key and value as they were (so, owning as many rows as there are query rows,
    it owns exactly the query rows); W_k changes the keys of every head and no value; W_v the values
    of every head and no key. With the rows disjoint (checked) and counted, the three are exact."""
    ids = torch.randint(3, 90, (1, 5))
    base = tiny_model(family)
    keys, values = _cached_keys_values(base, ids)
    targets = {weight: layout(base).weights[weight] for weight in ("W_q", "W_k", "W_v")}
    rows = [set(targets[weight].rows.index().tolist()) for weight in targets]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    fused_width = module_shape(blocks(base)[0].get_submodule(targets["W_q"].module))[1]
    assert sum(map(len, rows)) == fused_width

    q_keys, q_values = _cached_keys_values(_with_lora_on(family, "W_q", tiny_model), ids)
    assert torch.equal(q_keys, keys) and torch.equal(q_values, values)
    assert not torch.equal(_with_lora_on(family, "W_q", tiny_model)(input_ids=ids).logits, base(input_ids=ids).logits)
    k_keys, k_values = _cached_keys_values(_with_lora_on(family, "W_k", tiny_model), ids)
    assert _every_head_changed(keys, k_keys) and torch.equal(k_values, values)
    v_keys, v_values = _cached_keys_values(_with_lora_on(family, "W_v", tiny_model), ids)
    assert _every_head_changed(values, v_values) and torch.equal(v_keys, keys)


def _gate(model, ids) -> torch.Tensor:
    """The gate half of a fused gate_up_proj, as the MLP splits it (its activation's input)."""
    seen = []
    blocks(model)[0].mlp.activation_fn.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    model(input_ids=ids)
    return seen[0]


@pytest.mark.parametrize("family", FUSED_GATE_UP)
def test_fused_gate_up_each_matrix_owns_exactly_its_rows(family, tiny_model):
    ids = torch.randint(3, 90, (1, 5))
    gate = _gate(tiny_model(family), ids)
    assert torch.equal(_gate(_with_lora_on(family, "W_up", tiny_model), ids), gate)
    changed = (_gate(_with_lora_on(family, "W_gate", tiny_model), ids) - gate).abs().amax(dim=(0, 1))
    assert bool((changed > 0).all())  # every gate feature: W_gate owns all the gate rows


def test_neox_packing_is_per_head_not_three_equal_slices(tiny_model):
    """The bug of equal contiguous slices: on GPT-NeoX [0:d] holds q, k and v of the first heads."""
    targets = layout(tiny_model("gpt_neox")).weights
    head = 8  # hidden 32 / 4 heads
    assert targets["W_q"].rows.runs == tuple((3 * head * h, 3 * head * h + head) for h in range(4))
    assert targets["W_v"].rows.runs == tuple((3 * head * h + 2 * head, 3 * head * (h + 1)) for h in range(4))


@pytest.mark.parametrize("family", ["ctrl", "mamba"])
def test_weights_of_a_family_with_no_mapped_matrix_are_reported_without_a_density(family: str, tiny_model) -> None:
    """ft and bitfit run where no paper matrix maps: the record's weights say so instead of failing."""
    model = tiny_model(family)
    apply_method(model, make_method_config("ft", {}))
    report = weight_report(model)
    assert report["block_linear_density"] is None and report["trainable_bytes"] > 0
