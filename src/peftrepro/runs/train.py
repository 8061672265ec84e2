"""The training loop: AdamW over the trainable parameters, warmup + linear decay, label smoothing,
gradient accumulation, bf16 autocast on CUDA (fp32 on CPU), length-bucketed static-shape batches.

Built for speed (issue 6) without hiding anything:
- the optimizer holds only `requires_grad` parameters (frozen weights get no gradient and no
  Adam state); fused AdamW (CUDA and CPU);
- the LM head and the loss run on the target positions only (their indices are found on the host
  when the batch is built): prompts and padding never reach the vocabulary projection, the
  largest matrix of a small LM's step. Same loss, mathematically;
- batches are padded to a few fixed lengths (`pad_lengths`) and full batch size, so shapes repeat
  and the compiled transformer blocks (`train.compile`) compile once per length and then replay;
- labels are shifted once on the host, so the loss reads the logits without a slice copy;
- nothing in a step waits for the device: the loss is summed on the device and read every
  `log_every` steps; token counts are known on the host when the batch is built.
`train_step` is the unit the benchmark times against HF peft; `train.compile: false` is the
eager reference path (same arithmetic, no compiler).
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from peftrepro.errors import ConfigError
from peftrepro.interfaces import IGNORE_INDEX, EncodedExample
from peftrepro.lm import logits_at

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainSettings:
    """The `train:` node of the config (conf/config.yaml documents each field)."""

    lr: float
    batch_size: int  # examples per micro-batch; one optimizer step sees batch_size * grad_accum
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; when set, replaces `epochs`
    warmup_steps: int = 0
    warmup_tokens: int | None = None  # GPT-3 style warmup (Table 12: 250k tokens); overrides steps
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 0.0  # max grad norm; 0 = no clipping (the LoRA repo's --clip 0.0)
    max_length: int = 512
    pad_multiple: int = 64  # pad to a multiple of this (static shapes); max_length is the last bucket
    bucket_size: int = 50  # batches per length-sorted chunk (trade-off: padding vs randomness)
    compile: bool = False
    precision: str = "auto"
    deterministic: bool = True
    eval_every_epoch: bool = False
    log_every: int = 10
    progress: bool = True

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> TrainSettings:
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ConfigError(f"unknown train option(s) {unknown}; valid: {sorted(known)}")
        settings = cls(**dict(node))
        settings.validate()
        return settings

    def validate(self) -> None:
        problems = []
        if not self.lr > 0:
            problems.append(f"train.lr={self.lr} must be > 0")
        for name in ("batch_size", "grad_accum", "max_length", "pad_multiple", "bucket_size", "log_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.max_steps is None and self.epochs < 1 or self.max_steps is not None and self.max_steps < 1:
            problems.append(f"zero training steps: train.epochs={self.epochs}, train.max_steps="
                            f"{self.max_steps}; set epochs >= 1 or max_steps >= 1")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "adam_eps"):
            if getattr(self, name) < 0:
                problems.append(f"train.{name}={getattr(self, name)} must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"train.label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.precision not in PRECISIONS:
            problems.append(f"train.precision={self.precision!r} must be one of {PRECISIONS}")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum


# ---------------------------------------------------------------- seeding and devices

def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU); optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS determinism needs it
        # warn_only: a kernel without a deterministic version warns instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def autocast_for(device: torch.device, precision: str) -> ContextManager[Any]:
    """bf16 autocast on CUDA ("auto" or "bf16"); fp32 on CPU unless asked for: there bf16 gains too
    little to change the numerics of CPU runs (results/diagnostics/cpu_precision/: 1.25x in training)."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# ---------------------------------------------------------------- batches

@dataclass
class Batch:
    """One micro-batch on the host or device. `targets` are the labels shifted left by one, so
    `logits[:, t]` is scored against `targets[:, t]` with no slicing of the logits."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    tokens: int  # real (non-padding) tokens, counted on the host
    target_tokens: int
    # flat indices (into batch x length) of the positions that carry a target; None: score all
    target_index: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        pin = device.type == "cuda"
        move = (lambda t: t.pin_memory().to(device, non_blocking=True)) if pin else (lambda t: t.to(device))
        index = None if self.target_index is None else move(self.target_index)
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.targets),
                     self.tokens, self.target_tokens, index)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]


def pad_lengths(max_length: int, multiple: int) -> list[int]:
    """The fixed sequence lengths batches are padded to: multiples of `multiple` up to max_length."""
    lengths = list(range(multiple, max_length, multiple))
    return [*lengths, max_length]


def collate(examples: Sequence[EncodedExample], pad_id: int, batch_size: int,
            lengths: Sequence[int]) -> Batch:
    """Right-pad to the smallest allowed length and to `batch_size` rows (dummy rows carry no
    loss: all targets IGNORE_INDEX, one attended token so attention is well defined)."""
    longest = max(len(example.input_ids) for example in examples)
    width = next((length for length in lengths if length >= longest), None)
    if width is None:
        raise ValueError(f"an example of {longest} tokens exceeds train.max_length={lengths[-1]}")
    input_ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
    targets = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask[:, 0] = 1
    tokens = 0
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids)
        attention_mask[row, :size] = 1
        targets[row, :size - 1] = torch.tensor(example.labels[1:size])
        tokens += size
    target_index = target_positions(targets)
    return Batch(input_ids, attention_mask, targets, tokens, len(target_index), target_index)


def target_positions(targets: torch.Tensor) -> torch.Tensor:
    """Flat indices (into batch x length) of the positions that carry a target (host side)."""
    return (targets.flatten() != IGNORE_INDEX).nonzero().squeeze(1)


def epoch_batches(examples: Sequence[EncodedExample], settings: TrainSettings, pad_id: int,
                  rng: random.Random) -> list[Batch]:
    """Shuffle, sort by length within chunks of `bucket_size` batches, batch, shuffle the batches:
    little padding, and an order that still changes every epoch."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = settings.batch_size * settings.bucket_size
    groups: list[list[int]] = []
    for start in range(0, len(order), chunk):
        by_length = sorted(order[start:start + chunk], key=lambda i: len(examples[i].input_ids))
        groups += [by_length[i:i + settings.batch_size] for i in range(0, len(by_length), settings.batch_size)]
    rng.shuffle(groups)
    lengths = pad_lengths(settings.max_length, settings.pad_multiple)
    return [collate([examples[i] for i in group], pad_id, settings.batch_size, lengths) for group in groups]


def steps_per_epoch(num_examples: int, settings: TrainSettings) -> int:
    return math.ceil(math.ceil(num_examples / settings.batch_size) / settings.grad_accum)


def total_steps(num_examples: int, settings: TrainSettings) -> int:
    per_epoch = steps_per_epoch(num_examples, settings)
    return settings.max_steps if settings.max_steps is not None else per_epoch * settings.epochs


def warmup_steps(examples: Sequence[EncodedExample], settings: TrainSettings) -> int:
    """`warmup_steps`, or `warmup_tokens` converted with the mean example length of this data. The length
    counts the tokens as fed to the model, a prefix method's virtual tokens included (the paper does not
    say which it counted), so PreEmbed's 264 virtual tokens give it fewer warmup steps than LoRA's."""
    if settings.warmup_tokens is None:
        return settings.warmup_steps
    mean_tokens = sum(len(example.input_ids) for example in examples) / max(len(examples), 1)
    return math.ceil(settings.warmup_tokens / (mean_tokens * settings.examples_per_step))


# ---------------------------------------------------------------- one step

def token_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Mean over target tokens of (1-eps)*NLL + eps*mean_vocab(-log p): the LoRA repo's smoothed loss."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                           label_smoothing=label_smoothing)


def make_loss_fn(model: torch.nn.Module, label_smoothing: float) -> Callable[..., torch.Tensor]:
    """loss(input_ids, attention_mask, targets, target_index=None).

    With `target_index`, only the target positions go through the LM head (`peftrepro.lm`):
    prompt and padding rows would be projected onto the vocabulary only to be ignored. Without
    it, the full logits are scored (the reference path; equal losses and gradients, tested).
    """

    def loss_fn(input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
                target_index: torch.Tensor | None = None) -> torch.Tensor:
        if target_index is None:
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            return token_loss(logits, targets, label_smoothing)
        logits = logits_at(model, input_ids, attention_mask, target_index)
        return token_loss(logits, targets.flatten().index_select(0, target_index), label_smoothing)

    return loss_fn


@dataclass
class TrainState:
    """Everything a step needs. Build with `make_train_state`; `train_step` advances it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    settings: TrainSettings
    device: torch.device
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    step: int = 0
    parameters: list[torch.nn.Parameter] = field(default_factory=list)


def make_train_state(model: torch.nn.Module, settings: TrainSettings, num_steps: int,
                     num_warmup_steps: int = 0, device: torch.device | None = None) -> TrainState:
    """Optimizer over trainable parameters only, linear schedule, and the (optionally compiled)
    loss function. `model` must already be on `device` with its method applied."""
    device = device or next(model.parameters()).device
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not parameters:
        raise ConfigError("the model has no trainable parameters; the method froze everything")
    # Decay on every trainable parameter, as the LoRA repo's AdamW does (no bias/LayerNorm exclusion).
    # torch decays before the Adam update, the repo after it: a difference of order lr^2 * wd.
    # fused: one kernel for the whole update, on CUDA and (torch >= 2.4) CPU alike
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, betas=(settings.adam_beta1, settings.adam_beta2),
                                  eps=settings.adam_eps, weight_decay=settings.weight_decay, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps, max(num_steps, 1))
    model.train()
    if settings.compile:
        compile_blocks(model)
    loss_fn = make_loss_fn(model, settings.label_smoothing)
    return TrainState(model, optimizer, scheduler, settings, device, loss_fn, parameters=parameters)


def compile_blocks(model: torch.nn.Module) -> None:
    """torch.compile each transformer block (static shapes). The blocks are identical, so the
    compiler traces one and reuses it for the others: compile time does not grow with depth, and
    the head, the loss and the data-dependent target gather stay eager."""
    from peftrepro.methods.targets import blocks

    for block in blocks(model):
        block.compile(dynamic=False)


def train_step(state: TrainState, micro_batches: Sequence[Batch]) -> torch.Tensor:
    """One optimizer step over `micro_batches` (already on the device). Returns the mean loss as a
    device tensor: reading it (`.item()`) is the caller's choice, so the step never syncs."""
    total = torch.zeros((), device=state.device)
    autocast = autocast_for(state.device, state.settings.precision)
    for batch in micro_batches:
        with autocast:
            loss = state.loss_fn(batch.input_ids, batch.attention_mask, batch.targets,
                                 batch.target_index) / len(micro_batches)
        loss.backward()
        total += loss.detach()
    if state.settings.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.parameters, state.settings.grad_clip, foreach=True)
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return total


# ---------------------------------------------------------------- the loop

@dataclass
class TrainStats:
    steps: int = 0
    epochs: int = 0
    tokens: int = 0  # real tokens seen (padding excluded)
    padded_tokens: int = 0  # batch x length of the padded batches (a shared prefix runs fewer)
    seconds: float = 0.0
    last_loss: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last log)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LoopPosition:
    """Where `fit` stands between two optimizer steps. With the model's, optimizer's, schedule's and RNG
    states (peftrepro.runs.resume), enough to continue the loop as if it had never stopped."""

    stats: TrainStats
    epoch_rng_state: tuple[Any, ...]  # the data-order RNG's state when the current epoch's batches were drawn
    steps_in_epoch: int  # optimizer steps of the current epoch already done
    pending_loss: float  # the loss summed since the last log, over `pending_steps` steps
    pending_steps: int


class _StopRequest:
    """Whether a `fit` runs in this process, and whether it was asked to stop (`request_stop`)."""

    running = False
    asked = False


def request_stop() -> bool:
    """Ask the running `fit` to stop at the end of its current step, once it has saved its training state
    (the CLI's SIGTERM handler: a cancelled or timed-out job loses no trained step). False when no fit
    runs or a stop was already asked: the caller then stops at once."""
    if not _StopRequest.running or _StopRequest.asked:
        return False
    _StopRequest.asked = True
    return True


class _Loop:
    """The moving parts of one `fit`: its counters, the loss summed since the last log (on the device,
    so a step never syncs), the training clock (evaluations and saves excluded) and the progress bar."""

    def __init__(self, state: TrainState, num_steps: int, start: LoopPosition | None,
                 on_log: Callable[[dict[str, float], int], None] | None) -> None:
        self.state, self.num_steps, self.on_log = state, num_steps, on_log
        self.stats = TrainStats() if start is None else replace(start.stats, losses=list(start.stats.losses))
        if start is not None:
            self.stats.epochs -= 1  # the loop enters that epoch again (even after its last step: its end is still to come)
        self.pending = torch.full((), start.pending_loss if start else 0.0, device=state.device)
        self.pending_steps = start.pending_steps if start else 0
        self.progress = tqdm(total=num_steps, initial=self.stats.steps, unit="step", desc="train",
                             disable=not state.settings.progress, dynamic_ncols=True, mininterval=1.0)
        self.started = self.last_save = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.stats.steps >= self.num_steps

    def begin_epoch(self) -> None:
        self.stats.epochs += 1
        self.started = time.perf_counter()

    def end_epoch(self) -> None:
        _synchronize(self.state.device)
        self.stats.seconds += time.perf_counter() - self.started

    def step(self, micro_batches: Sequence[Batch], after_step: Callable[[int, int, float], None] | None) -> None:
        """One optimizer step, counted, and logged when `log_every` steps have passed (or at the end)."""
        rate_scale = self.rate_scale()  # the rate this step uses, before the schedule moves on
        self.pending += train_step(self.state, [batch.to(self.state.device) for batch in micro_batches])
        self.pending_steps += 1
        self.stats.steps += 1
        if after_step:
            after_step(self.stats.steps, self.num_steps, rate_scale)
        self.stats.tokens += sum(batch.tokens for batch in micro_batches)
        self.stats.padded_tokens += sum(batch.input_ids.numel() for batch in micro_batches)
        self.progress.update(1)
        # >=: a resumed run may log more often (log_every is not in the run key) than its saved loss sum
        if self.pending_steps >= self.state.settings.log_every or self.done:
            self._log()

    def rate_scale(self) -> float:
        """The share of its peak learning rate the next step uses (the schedule's warm-up and decay)."""
        group = self.state.optimizer.param_groups[0]
        peak = group.get("initial_lr", group["lr"])  # set by the schedule; a run without one keeps its rate
        return group["lr"] / peak if peak else 0.0

    def _log(self) -> None:
        stats = self.stats
        stats.last_loss = float(self.pending) / self.pending_steps  # the only sync: every log_every steps
        stats.losses.append((stats.steps, stats.last_loss))
        tokens_per_s = stats.tokens / (stats.seconds + time.perf_counter() - self.started)
        self.progress.set_postfix(loss=f"{stats.last_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        if self.on_log:
            self.on_log({"train/loss": stats.last_loss, "train/lr": self.state.scheduler.get_last_lr()[0],
                         "train/tokens_per_s": tokens_per_s}, stats.steps)
        self.pending.zero_()
        self.pending_steps = 0

    def close(self) -> None:
        self.progress.close()

    def seconds_since_save(self) -> float:
        return time.perf_counter() - self.last_save

    def save(self, save_position: Callable[[LoopPosition], None], epoch_rng_state: tuple[Any, ...],
             steps_in_epoch: int) -> None:
        """Hand the position to `save_position`; the time it takes is not training time."""
        _synchronize(self.state.device)
        saving = time.perf_counter()
        so_far = replace(self.stats, seconds=self.stats.seconds + saving - self.started, losses=list(self.stats.losses))
        save_position(LoopPosition(so_far, epoch_rng_state, steps_in_epoch, float(self.pending), self.pending_steps))
        self.last_save = time.perf_counter()
        self.started += self.last_save - saving


def fit(state: TrainState, examples: Sequence[EncodedExample], pad_id: int, seed: int, *,
        on_epoch_end: Callable[[int], None] | None = None,
        on_log: Callable[[dict[str, float], int], None] | None = None,
        after_step: Callable[[int, int, float], None] | None = None,
        start: LoopPosition | None = None,
        save_position: Callable[[LoopPosition], None] | None = None,
        save_every_s: float | None = None) -> TrainStats:
    """Train for `total_steps`; call `on_epoch_end(epoch)` (1-based) after each epoch (its time is
    not counted as training time), `on_log(metrics, step)` every `log_every` steps, and
    `after_step(steps done, total steps, share of the peak rate that step used)` after every optimizer step
    (the method's own schedule, `AppliedMethod.after_step`, e.g. pruning's).

    Resumable: `save_position(position)` is called after a step once `save_every_s` seconds have passed
    since the last call (0: after every step; its time is not training time), after an epoch's last step
    and the last step (before the evaluations, which a stop request does not wait for), and before the loop stops
    for `request_stop` (raising KeyboardInterrupt); `start` continues from such a position, the states it
    was saved with already restored (peftrepro.runs.resume)."""
    settings = state.settings
    loop = _Loop(state, total_steps(len(examples), settings), start, on_log)
    rng = random.Random(seed)  # data order has its own RNG: unaffected by dropout or init draws
    skip, epoch_rng_state = (start.steps_in_epoch, start.epoch_rng_state) if start else (0, None)
    resuming = start is not None
    _StopRequest.running, _StopRequest.asked = True, False
    try:
        while resuming or not loop.done:
            resuming = False
            loop.begin_epoch()
            if epoch_rng_state is not None:  # resumed: the interrupted epoch's batches, drawn again
                rng.setstate(epoch_rng_state)
            epoch_rng_state = rng.getstate()
            steps = list(_steps(epoch_batches(examples, settings, pad_id, rng), settings.grad_accum))
            for index, micro_batches in enumerate(steps):
                if index < skip:
                    continue
                if loop.done:  # resumed from the last step's save: nothing left to train
                    break
                loop.step(micro_batches, after_step)
                # also saved before an evaluation (an epoch's end, the last step), which a SIGTERM does not
                # wait for: a rerun then only evaluates again, instead of retraining since the last save
                due = save_every_s is not None and (loop.seconds_since_save() >= save_every_s
                                                    or index == len(steps) - 1 or loop.done)
                if save_position and (due or _StopRequest.asked):
                    loop.save(save_position, epoch_rng_state, index + 1)
                if _StopRequest.asked:
                    raise KeyboardInterrupt
                if loop.done:
                    break
            skip, epoch_rng_state = 0, None
            loop.end_epoch()
            if on_epoch_end:
                _StopRequest.running = False  # an evaluation is not waited for: a SIGTERM stops it at once
                on_epoch_end(loop.stats.epochs)
                _StopRequest.running = True
    finally:
        _StopRequest.running = _StopRequest.asked = False
        loop.close()
    return loop.stats


def _steps(batches: Sequence[Batch], grad_accum: int) -> Iterator[list[Batch]]:
    for start in range(0, len(batches), grad_accum):
        yield list(batches[start:start + grad_accum])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
