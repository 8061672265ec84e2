"""What the three tasks share: options, prompt+target encoding, batched generation and scoring.

Every task turns an example into `prefix + start + prompt + infix + target` token ids (PromptWrap places a
method's virtual tokens) with the loss on the target only. Text is tokenized without the
tokenizer's automatic special tokens, as the authors' GPT-2 code does: each task adds the EOS it
needs explicitly, and the BOS a tokenizer opens texts with (`sequence_start`: Llama, Gemma) once in
front of each sequence, so the layout is the same for GPT-2 and Llama tokenizers.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeVar

import torch

from peftrepro.errors import ConfigError
from peftrepro.interfaces import (
    IGNORE_INDEX,
    DecodingConfig,
    EncodedExample,
    PromptWrap,
)
from peftrepro.lm import logits_at
from peftrepro.models import plain_generation_config


@dataclass(frozen=True)
class TaskOptions:
    """Options every task accepts (Hydra `conf/task/<name>.yaml` passes them to `make_task`)."""

    train_split: str = "train"
    eval_split: str = "test"
    max_train_examples: int | None = None  # None = the whole split
    max_eval_examples: int | None = None
    # the example's own tokens per training sequence (the tokenizer's start + prompt + target; the
    # prompt is cut from the left beyond it). A prefix method's virtual tokens come on top, so every method sees the same text.
    max_length: int = 512


Options = TypeVar("Options", bound=TaskOptions)


def parse_options(options_type: type[Options], task: str, options: Mapping[str, Any] | None) -> Options:
    """Build `options_type` from a mapping; unknown names or bad values raise one ConfigError."""
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ConfigError(f"task {task!r}: unknown option(s) {unknown}; valid options: {sorted(fields)}")
    parsed = options_type(**options)
    for name in ("max_train_examples", "max_eval_examples"):
        value = getattr(parsed, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"task {task!r}: {name} must be a positive integer or null, got {value!r}")
    if not isinstance(parsed.max_length, int) or parsed.max_length < 8:
        raise ConfigError(f"task {task!r}: max_length must be an integer >= 8, got {parsed.max_length!r}")
    return parsed


def check_split(task: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise ConfigError(f"task {task!r}: unknown split {split!r}; valid splits: {list(valid)}")


def check_fraction(task: str, name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value < 1.0:
        raise ConfigError(f"task {task!r}: {name} must lie in (0, 1), got {value!r}")


T = TypeVar("T")


def sample(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """A seeded random sample of `limit` items kept in their original order (all when limit is None
    or covers them): a limited split spans the whole file, never just its first lines."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def hold_out(items: Sequence[T], fraction: float, seed: int) -> set[T]:
    """A seeded `fraction` (at least one) of the distinct `items`: the held-out part of a split
    (WikiSQL: tables; MNLI: training pairs by index)."""
    distinct = sorted(set(items))
    random.Random(seed).shuffle(distinct)
    return set(distinct[:max(1, round(len(distinct) * fraction))])


# ----------------------------------------------------------------------------- encoding


def text_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} has no EOS token; the tasks need one "
                          "to end targets and stop generation")
    return int(tokenizer.eos_token_id)


def pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos_id(tokenizer)


def fit_prompt(prompt_ids: list[int], budget: int) -> list[int]:
    """Keep the last `budget` prompt tokens: the part next to the target matters most."""
    return prompt_ids[-budget:] if budget > 0 else []


def encode_pair(prompt_ids: list[int], target_ids: list[int], wrap: PromptWrap, max_length: int,
                start: Sequence[int] = ()) -> EncodedExample:
    """`prefix + start + prompt + infix + target`, labels only on the target.

    `start` is the tokenizer's `sequence_start`. `max_length` bounds the example's own tokens (start
    + prompt + target); the wrap's virtual tokens come on top, first, as peft places a prompt-tuning
    prefix before the text's BOS. Over it, the prompt loses tokens from its start (after `start`); a
    target longer than `max_length - len(start)` loses its end (the loss still covers what remains).
    """
    room = max_length - len(start)
    target_ids = target_ids[:room]
    prompt_ids = fit_prompt(prompt_ids, room - len(target_ids))
    context = [*wrap.prefix_ids, *start, *prompt_ids, *wrap.infix_ids]
    return EncodedExample(input_ids=context + target_ids,
                          labels=[IGNORE_INDEX] * len(context) + list(target_ids))


def wrapped_prompt(prompt_ids: list[int], wrap: PromptWrap, max_prompt_tokens: int,
                   start: Sequence[int] = ()) -> list[int]:
    """The generation context: `start` and the prompt (cut from the left to `max_prompt_tokens` in all,
    `start` kept whole) inside the method's wrap."""
    return [*wrap.prefix_ids, *start, *fit_prompt(prompt_ids, max_prompt_tokens - len(start)), *wrap.infix_ids]


# ----------------------------------------------------------------------------- model helpers


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    size = max(1, int(size))
    return [items[start:start + size] for start in range(0, len(items), size)]


def left_pad(sequences: Sequence[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def cut_at_eos(token_ids: Sequence[int], eos: int) -> list[int]:
    token_ids = list(token_ids)
    return token_ids[:token_ids.index(eos)] if eos in token_ids else token_ids


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, contexts: Sequence[list[int]],
             decoding: DecodingConfig, desc: str) -> list[list[int]]:
    """New tokens (cut at EOS) for each context: transformers `generate`, left-padded batches, KV cache,
    with `decoding`'s settings only (what the model's generation_config.json adds is left out; the
    record names it: `models.shipped_decoding`)."""
    from tqdm.auto import tqdm

    eos, pad, device = eos_id(tokenizer), pad_id(tokenizer), model_device(model)
    was_training, shipped = model.training, model.generation_config
    model.eval()
    model.generation_config = plain_generation_config(model)  # decoding below, nothing the model ships
    outputs: list[list[int]] = []
    try:
        for batch in tqdm(batches(contexts, decoding.batch_size), desc=desc, leave=False):
            ids, mask = left_pad(batch, pad, device)
            generated = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=False, use_cache=True,
                num_beams=decoding.num_beams, length_penalty=decoding.length_penalty,
                no_repeat_ngram_size=decoding.no_repeat_ngram_size, max_new_tokens=decoding.max_new_tokens,
                eos_token_id=eos, pad_token_id=pad,
            )
            outputs.extend(cut_at_eos(row[ids.shape[1]:].tolist(), eos) for row in generated)
    finally:
        model.train(was_training)
        model.generation_config = shipped
    return outputs


@torch.no_grad()
def sequence_logprobs(model: torch.nn.Module, tokenizer: Any, pairs: Sequence[tuple[list[int], list[int]]],
                      batch_size: int) -> list[float]:
    """Sum of log p(target | context) for each (context ids, target ids) pair, batched, right-padded."""
    pad, device = pad_id(tokenizer), model_device(model)
    was_training = model.training
    model.eval()
    scores: list[float] = []
    try:
        for batch in batches(pairs, batch_size):
            width = max(len(ctx) + len(tgt) for ctx, tgt in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            # token at position p is predicted by the logits at p - 1: only those rows are projected
            # onto the vocabulary and normalised (peftrepro.lm), not every position of the batch
            positions, targets, owner = [], [], []
            for row, (ctx, tgt) in enumerate(batch):
                seq = torch.tensor(ctx + tgt, dtype=torch.long)
                ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
                positions += [row * width + p for p in range(len(ctx) - 1, len(ctx) + len(tgt) - 1)]
                targets += tgt
                owner += [row] * len(tgt)
            logits = logits_at(model, ids.to(device), mask.to(device), torch.tensor(positions, device=device))
            token_logprobs = torch.log_softmax(logits.float(), dim=-1).gather(
                1, torch.tensor(targets, device=device)[:, None]).squeeze(1)
            per_row = torch.zeros(len(batch), device=device).index_add_(
                0, torch.tensor(owner, device=device), token_logprobs)
            scores.extend(per_row.tolist())  # one device-to-host copy per batch
    finally:
        model.train(was_training)
    return scores


@torch.no_grad()
def next_token_logprobs(model: torch.nn.Module, tokenizer: Any, contexts: Sequence[list[int]],
                        token_ids: Sequence[int], batch_size: int) -> list[list[float]]:
    """log p(token | context) of each of `token_ids` after each context: one forward pass per
    context (right-padded batches; only the last context position reaches the LM head)."""
    pad, device = pad_id(tokenizer), model_device(model)
    was_training = model.training
    model.eval()
    # batches of similar lengths pad little; the scores go back to the contexts' own order
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    scores: list[list[float]] = []
    try:
        for batch in batches([contexts[i] for i in order], batch_size):
            width = max(len(context) for context in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, context in enumerate(batch):
                ids[row, :len(context)], mask[row, :len(context)] = torch.tensor(context, dtype=torch.long), 1
            last = torch.tensor([row * width + len(context) - 1 for row, context in enumerate(batch)], device=device)
            logits = logits_at(model, ids.to(device), mask.to(device), last)
            chosen = torch.log_softmax(logits.float(), dim=-1)[:, torch.tensor(list(token_ids), device=device)]
            scores.extend(chosen.tolist())  # one device-to-host copy per batch
    finally:
        model.train(was_training)
    in_place: list[list[float]] = [[] for _ in contexts]
    for position, index in enumerate(order):
        in_place[index] = scores[position]
    return in_place
