"""Magnitude and movement pruning (Sanh et al. 2020): schedule, masks, scores, measured sparsity."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers import get_constant_schedule, get_linear_schedule_with_warmup

from peftrepro.errors import ConfigError
from peftrepro.methods import apply_method, load_adapter, make_method_config, pruning, save_adapter, weight_report
from peftrepro.methods.checkpoint import pruning_masks
from peftrepro.methods.pruning import (
    MagnitudePruningConfig,
    _ScoreUpdate,
    masked_weight,
    scheduled_remaining,
    top_k_mask,
)
from peftrepro.methods.targets import block_linears, blocks, weight_target

FAMILIES = ["gpt2", "llama", "bert"]
METHODS = ["magnitude_pruning", "movement_pruning"]


def pruned_layers(model):
    return [block.get_submodule(path) for block, path in block_linears(model)]


def train_steps(applied, steps: range, total: int, seed: int = 0) -> None:
    """Optimizer steps `steps` (1-based) of plain SGD on a random-token loss, the method's hook after each."""
    model = applied.model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    generator = torch.Generator().manual_seed(seed)
    for step in steps:
        ids = torch.randint(3, 90, (4, 8), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        applied.after_step(step, total)


def test_the_cubic_schedule_holds_warms_up_falls_and_cools_down():
    config = MagnitudePruningConfig(remaining=0.1, warmup=0.1, cooldown=0.2)
    shares = [scheduled_remaining(step, 100, config) for step in range(101)]
    assert shares[:11] == [1.0] * 11  # t <= t_i: nothing pruned yet
    assert shares[80:] == [0.1] * 21  # the cool-down at v_f
    assert all(a >= b for a, b in zip(shares, shares[1:]))
    # Eq. 5 half-way through the ramp: v_f + (1 - v_f)(1 - 1/2)^3
    assert scheduled_remaining(45, 100, config) == pytest.approx(0.1 + 0.9 * 0.5 ** 3)


def test_a_schedule_too_short_for_its_ramp_still_ends_at_the_target():
    config = MagnitudePruningConfig(remaining=0.03, warmup=0.4, cooldown=0.5)
    assert [scheduled_remaining(step, 2, config) for step in (1, 2)] == [1.0, 0.03]


@pytest.mark.parametrize("keep", [0, 1, 5, 9, 12])
def test_top_k_keeps_exactly_k_even_among_ties(keep):
    scores = torch.tensor([[3.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 0.5], [1.0, 1.0, 4.0, 1.0]])
    mask = top_k_mask(scores, keep)
    assert int(mask.sum()) == keep
    if 0 < keep < scores.numel():  # what is kept scores at least as high as anything dropped
        assert scores[mask.bool()].min() >= scores[~mask.bool()].max()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_training_ends_at_the_target_share_in_every_block_linear(method, family, tiny_model):
    applied = apply_method(tiny_model(family), make_method_config(method, {"remaining": 0.25, "update_every": 3}))
    assert weight_report(applied.model)["block_linear_density"] == 1.0 and not applied.is_final()
    train_steps(applied, range(1, 7), total=10)
    assert not applied.is_final()  # mid-ramp: a run reports no evaluation made now
    middle = applied.facts()["pruning"]["measured_remaining"]
    assert 0.25 < middle < 1.0
    train_steps(applied, range(7, 11), total=10, seed=1)
    facts = applied.facts()["pruning"]
    assert applied.is_final() and facts["target_remaining"] == 0.25
    for layer in pruned_layers(applied.model):
        assert int(layer.weight_mask.sum()) == round(0.25 * layer.weight_mask.numel())
    assert facts["measured_remaining"] == pytest.approx(0.25, abs=1e-3)
    assert weight_report(applied.model)["block_linear_density"] == facts["measured_remaining"]


@pytest.mark.parametrize("method", METHODS)
def test_a_mixture_of_experts_says_which_matrices_stay_dense(method, tiny_model, caplog):
    dense = apply_method(tiny_model("llama"), make_method_config(method, {"remaining": 0.5}))
    assert dense.facts()["pruning"]["not_pruned"] == {}
    model = tiny_model("mixtral")  # its experts' MLPs are 3-D parameters, not linear layers
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    applied = apply_method(model, make_method_config(method, {"remaining": 0.5}))
    applied.after_step(10, 10)
    not_pruned = applied.facts()["pruning"]["not_pruned"]
    assert sum(count for path, count in not_pruned.items() if ".experts." in path) == experts
    assert {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"} <= set(not_pruned)
    assert "left dense: mlp.gate.weight" in caplog.text


def test_magnitude_keeps_the_largest_weights(tiny_model):
    applied = apply_method(tiny_model("llama"), make_method_config("magnitude_pruning", {"remaining": 0.5}))
    applied.after_step(10, 10)
    for layer in pruned_layers(applied.model):
        magnitude = layer.weight_orig.detach().abs()
        kept = layer.weight_mask.bool()
        assert magnitude[kept].min() >= magnitude[~kept].max()


def test_movement_scores_add_minus_gradient_times_weight_for_masked_weights_too(tiny_model):
    model = tiny_model("llama")
    applied = apply_method(model, make_method_config("movement_pruning", {"remaining": 0.5, "scores": "sum"}))
    applied.after_step(10, 10)  # prune to half first: the straight-through gradient must reach masked weights
    # W_down: its masked entries still see a gradient (W_q's would not: with ties pruned by position, the
    # masked query heads read key/value heads whose rows are masked too, so their gradient is 0)
    layer = blocks(model)[0].get_submodule(weight_target(model, "W_down").module)
    captured = []
    layer.register_forward_hook(lambda module, args, out: [module.weight.register_hook(captured.append), None][1])
    before = layer.weight_scores.clone()
    ids = torch.randint(3, 90, (2, 7))
    model(input_ids=ids, labels=ids).loss.backward()
    (grad,) = captured  # ∂L/∂W' for W' = W ⊙ M, every entry
    expected = before - grad * layer.weight_orig.detach()
    torch.testing.assert_close(layer.weight_scores, expected)
    masked = ~layer.weight_mask.bool()
    assert layer.weight_scores[masked].ne(before[masked]).any()  # masked weights keep scoring
    assert layer.weight_orig.grad[masked].eq(0).all()  # ... but the loss does not move them


@pytest.mark.parametrize("scores", ["adam", "sum"])
def test_movement_keeps_weights_moving_away_from_zero_where_magnitude_keeps_the_large_ones(tiny_model, scores):
    # one matrix, two halves: small weights pushed away from 0, large ones pulled towards it
    kept = {}
    for method in METHODS:
        model = tiny_model("llama")
        options = {"remaining": 0.5} | ({"scores": scores} if method == "movement_pruning" else {})
        applied = apply_method(model, make_method_config(method, options))
        layer = pruned_layers(model)[0]
        with torch.no_grad():
            layer.weight_orig.copy_(torch.where(torch.arange(layer.weight_orig.numel()).view_as(layer.weight_orig) % 2 == 0,
                                                torch.tensor(0.01), torch.tensor(1.0)))
        growing = layer.weight_orig.detach() < 0.5
        if method == "movement_pruning":  # dL/dW < 0 on the small ones (a descent step grows them), > 0 on the large
            _ScoreUpdate(layer)(torch.where(growing, -torch.ones_like(layer.weight_orig), torch.ones_like(layer.weight_orig)))
        applied.after_step(10, 10)
        kept[method] = layer.weight_mask.bool()
    assert torch.equal(kept["movement_pruning"], growing) and torch.equal(kept["magnitude_pruning"], ~growing)


@pytest.mark.parametrize("method, largest_pruned", [("magnitude_pruning", 0.0), ("movement_pruning", 1.0)])
def test_the_facts_say_which_share_of_each_matrixs_largest_weights_the_masks_removed(method, largest_pruned,
                                                                                      tiny_model):
    model = tiny_model("llama")
    applied = apply_method(model, make_method_config(method, {"remaining": 0.5}))
    if method == "movement_pruning":  # scores that rank the largest weights last
        for layer in pruned_layers(model):
            layer.weight_scores.copy_(-layer.weight_orig.detach().abs())
    applied.after_step(10, 10)
    assert applied.facts()["pruning"]["largest_pruned"] == largest_pruned


def test_the_largest_weights_pruned_are_counted_per_matrix_and_pooled_over_matrices(tiny_model, monkeypatch):
    monkeypatch.setattr(pruning, "LARGEST_SHARE", 0.01)  # tiny matrices: several largest weights each
    model = tiny_model("llama")
    applied = apply_method(model, make_method_config("magnitude_pruning", {"remaining": 0.5}))
    applied.after_step(10, 10)  # magnitude: every largest weight kept
    layers = pruned_layers(model)
    small, large = (min(layers, key=lambda layer: layer.weight_orig.numel()),
                    max(layers, key=lambda layer: layer.weight_orig.numel()))
    counts = [round(0.01 * layer.weight_orig.numel()) for layer in layers]
    assert min(counts) >= 5 and small.weight_orig.numel() < large.weight_orig.numel()
    with torch.no_grad():  # mask 3 of the small matrix's largest weights and 5 of the large one's
        for layer, masked in ((small, 3), (large, 5)):
            layer.weight_mask.view(-1)[layer.weight_orig.abs().flatten().topk(masked).indices] = 0
    assert applied.facts()["pruning"]["largest_pruned"] == pytest.approx(8 / sum(counts))


@pytest.mark.parametrize("schedule", [get_constant_schedule,  # the rate the scores' steps scale (the authors':
                                      # their scores share the weights' scheduler)
                                      partial(get_linear_schedule_with_warmup, num_warmup_steps=2, num_training_steps=6)])
def test_adam_scores_step_as_torch_adam_under_the_trainings_schedule_on_the_summed_gradient(tiny_model, schedule):
    model = tiny_model("llama")
    applied = apply_method(model, make_method_config("movement_pruning", {"remaining": 0.5, "score_lr": 0.05}))
    layer = pruned_layers(model)[0]
    reference = torch.zeros_like(layer.weight_orig, requires_grad=True)
    adam = torch.optim.Adam([reference], lr=0.05, betas=(0.9, 0.999), eps=1e-8)
    scheduler = schedule(adam)
    weight = layer.weight_orig.detach()
    for step in range(1, 7):
        grads = [torch.randn_like(weight) for _ in range(2)]  # two micro-batches of one optimizer step
        for grad in grads:
            _ScoreUpdate(layer)(grad)
        rate_scale = adam.param_groups[0]["lr"] / 0.05  # the share of the peak rate this step uses
        applied.after_step(step, 100, rate_scale)
        reference.grad = sum(grad * weight for grad in grads)
        adam.step()
        scheduler.step()
        torch.testing.assert_close(layer.weight_scores, reference.detach())
        assert layer.score_grad.eq(0).all()  # summed anew for the next step


def test_adam_scores_take_autograds_straight_through_gradient_summed_over_micro_batches(tiny_model):
    """Through a real backward: before the first mask update (M = 1), ∂L/∂W' is W_orig's own gradient, so
    the summed score gradient is Σ ∂L/∂W_orig ⊙ W_orig, and Adam's first step moves each score by
    −lr·g / (|g| + ε)."""
    model = tiny_model("llama")
    applied = apply_method(model, make_method_config("movement_pruning", {"remaining": 0.5, "score_lr": 0.05}))
    layer = pruned_layers(model)[0]
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):  # two micro-batches of one optimizer step
        ids = torch.randint(3, 90, (4, 8), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
    expected = layer.weight_orig.grad * layer.weight_orig.detach()
    torch.testing.assert_close(layer.score_grad, expected)
    applied.after_step(1, 100)
    torch.testing.assert_close(layer.weight_scores, -0.05 * expected / (expected.abs() + 1e-8))


@pytest.mark.parametrize("options, fragment", [({"scores": "sgd"}, "method.scores must be one of"),
                                               ({"score_lr": 0}, "score_lr")])
def test_movement_score_options_are_checked(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_method_config("movement_pruning", options)


@pytest.mark.parametrize("remaining", [0.3, 1.0])  # 1.0: the dense reference, every mask 1
@pytest.mark.parametrize("method", METHODS)
def test_a_pruned_checkpoint_restores_its_masks(method, remaining, tiny_model, tmp_path):
    model = tiny_model("gpt2")
    applied = apply_method(model, make_method_config(method, {"remaining": remaining}))
    train_steps(applied, range(1, 5), total=4)
    ids = torch.randint(3, 90, (2, 7))
    expected = model(input_ids=ids).logits
    save_adapter(model, applied.config, tmp_path)
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "adapter.safetensors"))
    assert {saved[name].dtype for name in pruning_masks(model)} == {torch.bool}  # a byte per weight
    fresh = tiny_model("gpt2")
    load_adapter(fresh, tmp_path)
    for name, mask in pruning_masks(model).items():
        assert torch.equal(pruning_masks(fresh)[name], mask), name
    assert torch.equal(fresh(input_ids=ids).logits, expected)
    assert all(torch.equal(masked_weight(a), masked_weight(b)) for a, b in zip(pruned_layers(model),
                                                                                pruned_layers(fresh)))


def test_the_embeddings_stay_frozen_and_every_block_trains(tiny_model):
    model = tiny_model("llama")
    apply_method(model, make_method_config("movement_pruning", {}))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters() if ".layers." in name}


@pytest.mark.parametrize("method", METHODS)
def test_keeping_every_weight_fine_tunes_the_same_weights_densely(method, tiny_model):
    # remaining=1: the pruned rows' dense reference, with their trainable weights and nothing masked
    model = tiny_model("llama")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    applied = apply_method(model, make_method_config(method, {"remaining": 1.0, "update_every": 2}))
    train_steps(applied, range(1, 8), total=10)
    # at its target from the start, yet no evaluation counts before the cool-down, as for the pruned rows
    assert not applied.is_final()
    train_steps(applied, range(8, 11), total=10, seed=1)
    assert applied.is_final()
    facts = applied.facts()["pruning"]
    assert facts["mask_updates"] == 0 and facts["measured_remaining"] == 1.0
    assert weight_report(model)["block_linear_density"] == 1.0
    after = {name.replace("weight_orig", "weight"): p for name, p in model.named_parameters()}
    assert after.keys() == before.keys()
    changed = {name for name, p in after.items() if not torch.equal(p, before[name])}
    assert changed == {name for name in before if ".layers." in name}  # every block weight moved, nothing else
