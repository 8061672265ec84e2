"""Pruning while fine-tuning (Sanh, Wolf & Rush 2020, arXiv 2005.07683): magnitude and movement pruning
of the blocks' linear layers, the rest of the blocks fine-tuned (`magnitude_pruning`, `movement_pruning`).

Both keep, in every linear layer of every block (`targets.block_linears`: the modules of W_q ... W_down
in the model's layout, a fused projection such as GPT-2's c_attn as one matrix), the share v of its
weights with the highest importance score S, and fine-tune every parameter of the blocks. A masked
weight gets no loss gradient (W' = W ⊙ M); only weight decay and Adam's remaining momentum move it, and
it comes back only when the scores re-rank it above a kept one (Zhu & Gupta's gradual pruning). Everything
outside the blocks (the embeddings, the LM head tied to them, a decoder's final norm) stays frozen, as Sanh et
al. freeze the embedding modules (§5). A block matrix that is no linear layer of the layout (a mixture of
experts' MLPs) stays dense: the facts name it
(`not_pruned`), and the pruning table shows no accuracy for such a run. `remaining: 1` prunes nothing:
the same trainable weights and rate with no sparsity, the dense point the pruned rows are measured from.
- Magnitude pruning (MaP, zeroth order): S = |W|, the weights farthest from 0.
- Movement pruning (MvP, first order): scores S learned from the straight-through gradient of Eq. 2,
  ∂L/∂S = ∂L/∂W' ⊙ W, where W' = W ⊙ M is the weight the forward uses; it reaches every entry, masked or
  not, so masked weights can score their way back. `scores: adam` (the default) steps S with Adam at
  `score_lr` once per optimizer step, as the authors' code trains its mask scores (AdamW, 1e-2, no
  weight decay, the rate following the training's warm-up and linear decay: their scores share the
  weights' optimizer and schedule). Theirs are also clipped with the weights' gradients (max norm 1);
  ours are not: Adam divides each step by the gradient's own scale, so a clipping factor changes a step
  only where it changes from one step to the next. `scores: sum`
  is Eq. 3 as written, S = −Σ_t (∂L/∂W')⁽ᵗ⁾ ⊙ W⁽ᵗ⁾ (plain gradient steps, rate 1: Top_v is blind to the
  scale). The sum grows with |W|, so on a backbone with outlier weights (SmolLM2's reach |W| ≈ 9) it
  prunes the largest weights first; Adam's per-weight normalisation removes that scale.
- Schedule (§5, Eq. 5; the cubic schedule of Zhu & Gupta 2018, used for both): v = 1 for the
  first `warmup` share of the steps, then v_f + (1 − v_f)(1 − (t − t_i)/(T − t_i − t_f))³, and v_f
  for the last `cooldown` share ("a few steps of cool-down ... improves the performance"). Masks are
  recomputed every `update_every` steps, on the step v reaches v_f and on the last step, each matrix
  ranked on its own ("local" Top_v: §7 finds local and global alike). They are recomputed through the
  cool-down too, at v_f: the authors' code ranks the scores on every forward pass, where Zhu & Gupta fix
  the mask once v_f is reached.
The masking is torch.nn.utils.prune's reparametrisation (weight = weight_orig ⊙ weight_mask, computed in
a forward pre-hook before every forward); the schedule rewrites `weight_mask` in place. torch's own
pruning methods rank by |·| (L1Unstructured), which suits MaP but not MvP's signed scores (App. A.1:
ranking |S| loses the guarantee that a swap lowers the loss), so both rank with `top_k_mask` here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from peftrepro.errors import ConfigError
from peftrepro.methods.base import AppliedMethod, MethodConfig, freeze_all, require_positive
from peftrepro.methods.targets import block_linears, blocks, matrices_text, uncovered_block_matrices

log = logging.getLogger(__name__)


@dataclass
class PruningConfig(MethodConfig):
    scheduled: ClassVar[bool] = True  # the sparsity ramp (Pruner)
    # v_f: the share of each pruned matrix's weights kept at the end; 1 prunes nothing, which leaves the
    # blocks fine-tuned with all outside them frozen: the pruned rows' dense reference
    remaining: float = 0.1
    warmup: float = 0.1  # t_i / T: steps before pruning starts (the authors' command: 1 of 10 epochs)
    cooldown: float = 0.2  # t_f / T: steps at v_f at the end (the authors' command: 2 of 10 epochs)
    update_every: int = 10  # steps between mask updates, from pruning's start to the end (Zhu & Gupta's Δt)

    def validate(self) -> None:
        if isinstance(self.remaining, bool) or not isinstance(self.remaining, (int, float)) \
                or not 0 < self.remaining <= 1:
            raise ConfigError(f"{self.name}: method.remaining (the share of weights kept) must be above 0 and at "
                              f"most 1, e.g. 0.1 for 10 % of the weights (1 keeps them all), got {self.remaining!r}")
        for option in ("warmup", "cooldown"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"{self.name}: method.{option} (a share of the training steps) must be in [0, 1), "
                                  f"got {value!r}")
        if self.warmup + self.cooldown >= 1:
            raise ConfigError(f"{self.name}: method.warmup + method.cooldown = {self.warmup + self.cooldown:g} leaves "
                              "no step to prune in; keep their sum below 1")
        require_positive(self, "update_every", self.update_every)


@dataclass
class MagnitudePruningConfig(PruningConfig):
    name: ClassVar[str] = "magnitude_pruning"


@dataclass
class MovementPruningConfig(PruningConfig):
    name: ClassVar[str] = "movement_pruning"
    scores: str = "adam"  # how S learns from ∂L/∂W' ⊙ W: "adam" (the authors' code) or "sum" (Eq. 3 as written)
    score_lr: float = 1e-2  # Adam's peak rate for the scores (the authors' mask_scores_learning_rate)

    def validate(self) -> None:
        super().validate()
        if self.scores not in SCORE_RULES:
            raise ConfigError(f"{self.name}: method.scores must be one of {list(SCORE_RULES)}, got {self.scores!r}")
        if isinstance(self.score_lr, bool) or not isinstance(self.score_lr, (int, float)) or not self.score_lr > 0:
            raise ConfigError(f"{self.name}: method.score_lr (Adam's peak rate for the scores) must be a number above 0, "
                              f"e.g. 1e-2, got {self.score_lr!r}")


# the buffers each way of learning the scores keeps per pruned matrix (Adam: the step's summed gradient
# and its moments); non-persistent, yet saved and restored with a run's training state like the masks, but
# for the summed gradient: zero after every optimizer step (`Pruner.step_scores`), so a save leaves it out
SCORE_RULES = {"sum": ("weight_scores",),
               "adam": ("weight_scores", "score_grad", "score_exp_avg", "score_exp_avg_sq")}
STEP_BUFFERS = frozenset({"score_grad"})
# the share of each matrix's weights, largest |W| first, whose pruned share the facts report: a backbone's
# outlier weights (SmolLM2's reach |W| ≈ 9), which magnitude pruning never removes and movement may
LARGEST_SHARE = 0.001
# torch's defaults; 1e-8 is also the authors' adam_epsilon, added here where torch.optim.Adam adds it (theirs
# adds it before the bias correction: a difference only for scores whose gradient is near 1e-7)
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def cooldown_start(total: int, cooldown: float) -> int:
    """The step from which the share kept stays at v_f (t_f: the last `cooldown` share of the `total` steps)."""
    return total - round(cooldown * total)


def scheduled_remaining(step: int, total: int, config: PruningConfig) -> float:
    """The share of weights kept after `step` of `total` optimizer steps (Sanh et al. Eq. 5)."""
    start, end = round(config.warmup * total), cooldown_start(total, config.cooldown)
    if step <= start:
        return 1.0
    if step >= end:
        return float(config.remaining)
    progress = (step - start) / (end - start)
    return config.remaining + (1 - config.remaining) * (1 - progress) ** 3


def top_k_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """1 at the `keep` highest scores, 0 elsewhere; exactly `keep` ones, ties broken by position."""
    flat = scores.flatten()
    mask = torch.zeros_like(flat)
    if keep >= flat.numel():
        return mask.fill_(1).view_as(scores)
    if keep <= 0:
        return mask.view_as(scores)
    # the largest dropped score: a selection in O(n), where a sort of every matrix each update is not
    threshold = flat.kthvalue(flat.numel() - keep).values
    above = flat > threshold
    mask[above] = 1
    missing = keep - int(above.sum())
    if missing > 0:  # scores equal to the threshold (e.g. weights dequantised from a GGUF grid)
        mask[(flat == threshold).nonzero().squeeze(1)[:missing]] = 1
    return mask.view_as(scores)


def masked_weight(module: nn.Module) -> torch.Tensor:
    """The weight the forward uses: weight_orig ⊙ weight_mask (torch.nn.utils.prune's names)."""
    return module.weight_orig * module.weight_mask


class AccumulateMovement:
    """Forward pre-hook after prune's: hook the weight it just computed (W' = W ⊙ M) so that the
    backward hands ∂L/∂W' ⊙ W to the scores (`_ScoreUpdate`). A plain object, so the model deep-copies
    and pickles."""

    def __call__(self, module: nn.Module, args: tuple) -> None:
        weight = module.weight
        if weight.requires_grad:  # training; under no_grad (evaluation) nothing is scored
            weight.register_hook(_ScoreUpdate(module))


class _ScoreUpdate:
    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, grad: torch.Tensor) -> None:
        score_grad = grad * self.module.weight_orig.detach()  # ∂L/∂S (Eq. 2's straight-through estimator)
        if hasattr(self.module, "score_grad"):  # Adam steps once per optimizer step, on the summed micro-batches
            self.module.score_grad.add_(score_grad)
        else:  # Eq. 3: S −= ∂L/∂S, at once
            self.module.weight_scores.sub_(score_grad)


class Pruner:
    """The pruned layers and their schedule: what `after_step`, `is_final` and `facts` report on."""

    def __init__(self, model: nn.Module, config: PruningConfig):
        self.config = config
        self.layers = [block.get_submodule(path) for block, path in block_linears(model)]
        self.not_pruned = uncovered_block_matrices(model)
        if self.not_pruned:
            log.warning("%s prunes the blocks' linear layers only; left dense: %s", config.name,
                        matrices_text(self.not_pruned))
        self.current = 1.0
        self.updates = 0
        self.cooling = False  # in the cool-down: the steps whose evaluations count (is_final)
        for layer in self.layers:
            prune.custom_from_mask(layer, "weight", torch.ones_like(layer.weight))
            if isinstance(config, MovementPruningConfig):
                for buffer in SCORE_RULES[config.scores]:
                    # fp32 whatever the base's dtype, as a method's own state is (base.trainable_dtype): in
                    # bf16, Adam's second moment would not decay (v * 0.999 rounds back to v)
                    layer.register_buffer(buffer, torch.zeros_like(layer.weight_orig, dtype=torch.float32),
                                          persistent=False)
                layer.register_forward_pre_hook(AccumulateMovement())

    def scores(self, layer: nn.Module) -> torch.Tensor:
        if isinstance(self.config, MovementPruningConfig):
            return layer.weight_scores
        return layer.weight_orig.detach().abs()

    def after_step(self, step: int, total: int, rate_scale: float = 1.0) -> None:
        """The training loop's hook after optimizer step `step` of `total`; `rate_scale`: the share of the peak
        learning rate that step used (the loop always passes it; 1, the full rate, for a caller outside one)."""
        if isinstance(self.config, MovementPruningConfig) and self.config.scores == "adam":
            self.step_scores(step, rate_scale)
        self.cooling = step >= cooldown_start(total, self.config.cooldown)
        remaining = scheduled_remaining(step, total, self.config)
        reaches_final = remaining == self.config.remaining != self.current
        if remaining < 1 and (step % self.config.update_every == 0 or step == total or reaches_final):
            self.update_masks(remaining)

    @torch.no_grad()
    def step_scores(self, step: int, rate_scale: float) -> None:
        """One Adam step of every score on the gradient summed since the last (`step`: optimizer steps done,
        so a resumed run corrects its moments' bias as the uninterrupted one does), at `score_lr` times the
        share of its peak rate the weights' step used (`rate_scale`: the training's warm-up and decay)."""
        (beta1, beta2), lr = ADAM_BETAS, self.config.score_lr * rate_scale
        for layer in self.layers:
            grad, mean, square = layer.score_grad, layer.score_exp_avg, layer.score_exp_avg_sq
            mean.mul_(beta1).add_(grad, alpha=1 - beta1)
            square.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = (square / (1 - beta2 ** step)).sqrt_().add_(ADAM_EPS)
            layer.weight_scores.addcdiv_(mean, denominator, value=-lr / (1 - beta1 ** step))
            grad.zero_()

    @torch.no_grad()
    def update_masks(self, remaining: float) -> None:
        for layer in self.layers:
            scores = self.scores(layer)
            layer.weight_mask.copy_(top_k_mask(scores, round(remaining * scores.numel())))
        self.current = remaining
        self.updates += 1

    def schedule_state(self) -> dict[str, Any]:
        return {"current": self.current, "updates": self.updates, "cooling": self.cooling}

    def restore_schedule(self, saved: Mapping[str, Any]) -> None:
        self.current, self.updates = float(saved["current"]), int(saved["updates"])
        # a state saved before the flag existed: a pruned run reaches v_f only in the cool-down
        self.cooling = bool(saved.get("cooling", self.current == self.config.remaining < 1))

    def is_final(self) -> bool:
        """At v_f and in the cool-down: a pruned run reaches both on the same step; remaining=1 is at v_f
        from the start, so the cool-down alone decides, and the dense row reports the epochs the pruned
        rows report (with every epoch evaluated, it would otherwise pick its best of more epochs)."""
        return self.cooling and self.current == self.config.remaining

    @torch.no_grad()
    def facts(self) -> dict[str, Any]:
        kept = sum(int(torch.count_nonzero(masked_weight(layer))) for layer in self.layers)
        total = sum(layer.weight_orig.numel() for layer in self.layers)
        return {"pruning": {"target_remaining": float(self.config.remaining), "measured_remaining": kept / total,
                            "largest_pruned": self.largest_pruned(), "pruned_layers": len(self.layers),
                            "weights": total, "mask_updates": self.updates, "not_pruned": dict(self.not_pruned)}}

    @torch.no_grad()
    def largest_pruned(self) -> float:
        """The share of each matrix's largest `LARGEST_SHARE` of weights by |W| (W_orig: the weight under its
        mask, which a masked weight keeps but for weight decay) that its mask removes, over every matrix."""
        pruned = largest = 0
        for layer in self.layers:
            count = max(1, round(LARGEST_SHARE * layer.weight_orig.numel()))
            top = layer.weight_orig.detach().abs().flatten().topk(count).indices
            pruned += int((layer.weight_mask.flatten()[top] == 0).sum())
            largest += count
        return pruned / largest


def remove_masks(model: nn.Module) -> None:
    """Make each pruned weight a plain parameter again, its mask applied (W = W_orig ⊙ M; in place):
    what a merged checkpoint holds."""
    for module in model.modules():
        if hasattr(module, "weight_mask"):  # torch.nn.utils.prune's reparametrisation
            prune.remove(module, "weight")
        for key in [key for key, hook in module._forward_pre_hooks.items() if isinstance(hook, AccumulateMovement)]:
            del module._forward_pre_hooks[key]  # movement's scoring, and its scores
            for buffer in {name for rule in SCORE_RULES.values() for name in rule}:
                if hasattr(module, buffer):
                    delattr(module, buffer)


def _apply_pruning(model: nn.Module, config: PruningConfig) -> AppliedMethod:
    freeze_all(model)
    for block in blocks(model):
        block.requires_grad_(True)
    pruner = Pruner(model, config)
    return AppliedMethod(model=model, config=config, after_step=pruner.after_step, is_final=pruner.is_final,
                         facts=pruner.facts, schedule_state=pruner.schedule_state,
                         restore_schedule=pruner.restore_schedule, step_buffers=STEP_BUFFERS)


def apply_magnitude_pruning(model: nn.Module, config: MagnitudePruningConfig) -> AppliedMethod:
    return _apply_pruning(model, config)


def apply_movement_pruning(model: nn.Module, config: MovementPruningConfig) -> AppliedMethod:
    return _apply_pruning(model, config)
