"""The training loop on a tiny model with hand-made examples (no task, no method package)."""

from __future__ import annotations

import random

import pytest
import torch

from peftrepro.errors import ConfigError
from peftrepro.interfaces import IGNORE_INDEX, EncodedExample
from peftrepro.models import load_model
from peftrepro.runs.train import (
    TrainSettings,
    collate,
    epoch_batches,
    fit,
    make_train_state,
    pad_lengths,
    seed_everything,
    token_loss,
    train_step,
    warmup_steps,
)
from tiny_training import TINY_LLAMA, examples, settings


def train_tiny(seed: int = 0, **changes) -> tuple[list[tuple[int, float]], torch.nn.Module]:
    seed_everything(seed)
    model, _ = load_model(TINY_LLAMA)
    state = make_train_state(model, settings(**changes), num_steps=12)
    stats = fit(state, examples(), pad_id=0, seed=seed)
    return stats.losses, model


def test_pad_lengths_are_few_and_end_at_max_length() -> None:
    assert pad_lengths(512, 64) == [64, 128, 192, 256, 320, 384, 448, 512]
    assert pad_lengths(100, 64) == [64, 100]


def test_collate_shifts_labels_and_pads_to_a_fixed_shape() -> None:
    rows = [EncodedExample([1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4]), EncodedExample([5, 6], [IGNORE_INDEX, 6])]
    batch = collate(rows, pad_id=0, batch_size=3, lengths=[8, 16])
    assert batch.shape == (3, 8)
    assert batch.targets[0].tolist() == [IGNORE_INDEX, 3, 4] + [IGNORE_INDEX] * 5  # logits[t] predicts token t+1
    assert batch.targets[1].tolist() == [6] + [IGNORE_INDEX] * 7
    assert batch.targets[2].tolist() == [IGNORE_INDEX] * 8  # dummy row: no loss
    assert batch.attention_mask.sum(1).tolist() == [4, 2, 1]
    assert (batch.tokens, batch.target_tokens) == (6, 3)


def test_epoch_batches_cover_every_example_once_in_a_seeded_order() -> None:
    rows = [EncodedExample(list(range(1, n + 2)), list(range(1, n + 2))) for n in range(30)]
    first = epoch_batches(rows, settings(batch_size=4, bucket_size=2), 0, random.Random(0))
    again = epoch_batches(rows, settings(batch_size=4, bucket_size=2), 0, random.Random(0))
    other = epoch_batches(rows, settings(batch_size=4, bucket_size=2), 0, random.Random(1))
    lengths = sorted(int(m) for batch in first for m in batch.attention_mask.sum(1) if batch.tokens)
    assert sum(batch.tokens for batch in first) == sum(len(r.input_ids) for r in rows)
    assert [b.input_ids.tolist() for b in first] == [b.input_ids.tolist() for b in again]
    assert [b.input_ids.tolist() for b in first] != [b.input_ids.tolist() for b in other]
    assert {batch.shape[1] for batch in first} <= {16, 32}
    assert len(lengths) >= 30


def test_token_loss_is_the_repo_label_smoothed_loss() -> None:
    logits, targets = torch.randn(2, 3, 7), torch.tensor([[1, 2, IGNORE_INDEX], [IGNORE_INDEX, 4, 5]])
    eps, logp = 0.1, torch.log_softmax(logits, -1)
    mask = targets != IGNORE_INDEX
    nll = -logp[mask].gather(1, targets[mask][:, None]).squeeze(1)
    expected = ((1 - eps) * nll + eps * -logp[mask].mean(-1)).mean()
    torch.testing.assert_close(token_loss(logits, targets, eps), expected)


def test_loss_goes_down_and_the_same_seed_repeats_exactly() -> None:
    losses, _ = train_tiny(seed=3)
    again, _ = train_tiny(seed=3)
    other, _ = train_tiny(seed=4)
    assert losses[-1][1] < 0.5 * losses[0][1]
    assert losses == again
    assert losses != other


def test_padding_is_invisible_to_the_loss_without_dropout() -> None:
    """Padded positions come after every real token (causal attention never reads them) and carry no
    target. (With dropout the masks are drawn over the padded batch: pad_multiple is in the run key.)"""
    narrow, narrow_model = train_tiny(seed=1, pad_multiple=16)  # the 12-token examples in 16 columns
    wide, wide_model = train_tiny(seed=1, pad_multiple=32)  # in 32
    assert [step for step, _ in narrow] == [step for step, _ in wide]
    torch.testing.assert_close([loss for _, loss in wide], [loss for _, loss in narrow], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dict(wide_model.named_parameters()), dict(narrow_model.named_parameters()),
                               atol=1e-5, rtol=1e-4)


def test_gradient_accumulation_matches_the_large_batch() -> None:
    rows = examples(8)
    results = []
    for batch_size, grad_accum in ((8, 1), (4, 2)):
        seed_everything(0)
        model, _ = load_model(TINY_LLAMA)
        s = settings(batch_size=batch_size, grad_accum=grad_accum, bucket_size=1)
        state = make_train_state(model, s, num_steps=1)
        batches = [collate(rows[i:i + batch_size], 0, batch_size, [16, 32]) for i in range(0, 8, batch_size)]
        loss = train_step(state, batches)
        results.append((float(loss), torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=0)


def test_the_method_hook_runs_after_every_optimizer_step_with_the_share_of_the_rate_it_used() -> None:
    seed_everything(0)
    model, _ = load_model(TINY_LLAMA)
    state = make_train_state(model, settings(epochs=2, grad_accum=2), num_steps=4, num_warmup_steps=2)
    seen = []

    def after_step(step: int, total: int, rate_scale: float) -> None:  # the weights of this step are updated already
        seen.append((step, total, state.step, state.optimizer.state_dict()["state"][0]["step"].item(), rate_scale))

    fit(state, examples(16), pad_id=0, seed=0, after_step=after_step)
    # linear warm-up over 2 steps, then linear decay to 0 at step 4: the rates steps 1-4 used
    assert seen == [(step, 4, step, step, share) for step, share in zip(range(1, 5), [0.0, 0.5, 1.0, 0.5])]


def test_optimizer_holds_only_trainable_parameters_and_frozen_ones_get_no_grad() -> None:
    model, _ = load_model(TINY_LLAMA)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("layers.1." in name)
    state = make_train_state(model, settings(), num_steps=1)
    held = {id(p) for group in state.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    train_step(state, [collate(examples(4), 0, 4, [16])])
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def _fresh_state(num_steps: int = 1, num_warmup_steps: int = 0, **changes):
    seed_everything(0)
    model, _ = load_model(TINY_LLAMA)
    return make_train_state(model, settings(**changes), num_steps=num_steps, num_warmup_steps=num_warmup_steps)


def test_the_rate_warms_up_linearly_then_decays_linearly_to_zero() -> None:
    """The schedule every profile trains with (mini: 20 warmup steps of 250), step by step."""
    state, rates = _fresh_state(num_steps=10, num_warmup_steps=4, lr=1e-2), []
    batch = collate(examples(4), 0, 4, [16])
    for _ in range(10):
        rates.append(state.optimizer.param_groups[0]["lr"])
        train_step(state, [batch])
    expected = [1e-2 * step / 4 for step in range(4)] + [1e-2 * (10 - step) / 6 for step in range(4, 10)]
    assert rates == pytest.approx(expected, abs=1e-12)


def test_weight_decay_shrinks_every_trainable_weight_by_lr_times_decay() -> None:
    """Decoupled (AdamW) decay: the same step with and without it differs by exactly lr * wd * p0."""
    batch, updated = collate(examples(4), 0, 4, [16]), []
    for weight_decay in (0.0, 0.1):
        state = _fresh_state(lr=1e-2, weight_decay=weight_decay)
        before = torch.cat([p.detach().flatten() for p in state.parameters])
        train_step(state, [batch])
        updated.append(torch.cat([p.detach().flatten() for p in state.parameters]))
    torch.testing.assert_close(updated[1] - updated[0], -1e-2 * 0.1 * before, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("grad_clip", [0.0, 1e-3])
def test_gradients_reach_the_optimizer_clipped_to_grad_clip(grad_clip: float) -> None:
    state, norms = _fresh_state(grad_clip=grad_clip), []
    step = state.optimizer.step

    def recording_step(*args, **kwargs):
        norms.append(float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in state.parameters]))))
        return step(*args, **kwargs)

    state.optimizer.step = recording_step
    train_step(state, [collate(examples(4), 0, 4, [16])])
    assert norms[0] <= 1e-3 * (1 + 1e-4) if grad_clip else norms[0] > 1e-2  # unclipped, far above the limit


def test_warmup_tokens_convert_to_steps_with_the_mean_length() -> None:
    assert warmup_steps(examples(4, length=10), settings(batch_size=5, warmup_tokens=1000)) == 20
    assert warmup_steps(examples(4), settings(warmup_steps=7)) == 7


@pytest.mark.parametrize(("changes", "message"), [
    ({"lr": -1e-4}, "train.lr=-0.0001 must be > 0"),
    ({"epochs": 0}, "zero training steps"),
    ({"max_steps": 0}, "zero training steps"),
    ({"batch_size": 0}, "train.batch_size=0 must be >= 1"),
    ({"precision": "fp8"}, "train.precision='fp8'"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
])
def test_bad_settings_raise_one_config_error(changes, message) -> None:
    node = {"lr": 1e-3, "batch_size": 2} | changes
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        TrainSettings.from_config(node)


def test_unknown_train_option_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown train option.*'lr_typo'"):
        TrainSettings.from_config({"lr": 1e-3, "batch_size": 2, "lr_typo": 1})


@pytest.mark.slow
def test_compiled_step_matches_eager() -> None:
    eager, _ = train_tiny(seed=0, compile=False)
    compiled, _ = train_tiny(seed=0, compile=True)
    for (step_a, loss_a), (step_b, loss_b) in zip(eager[:4], compiled[:4]):
        assert step_a == step_b and loss_a == pytest.approx(loss_b, abs=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_head_on_target_rows_gives_the_full_logits_loss_and_grads(family: str, label_smoothing: float) -> None:
    from peftrepro.runs.train import make_loss_fn

    config = dict(TINY_LLAMA, architecture=family, name=f"tiny-{family}")
    if family == "gpt2":
        config["config"] = {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 128,
                            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # same mask twice
    model, _ = load_model(config)
    batch = collate(examples(3), 0, 4, [16])
    assert batch.target_index.tolist() == (batch.targets.flatten() != IGNORE_INDEX).nonzero().flatten().tolist()
    loss_fn = make_loss_fn(model, label_smoothing)
    results = []
    for index in (batch.target_index, None):  # None: the reference, LM head on every position
        model.zero_grad()
        loss = loss_fn(batch.input_ids, batch.attention_mask, batch.targets, index)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-6)
    for fast, full in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(fast, full, atol=1e-6, rtol=1e-5)
