"""Prefix-embedding (PreEmbed) and prefix-layer (PreLayer) tuning through virtual tokens (§5.1), and
prompt tuning (Lester et al. 2021): PreEmbed with virtual tokens before the input only, no infix.

The method owns l_p + l_i virtual token ids just past the real vocabulary (`AppliedMethod.prompt`:
prefix ids go before the prompt, infix ids after it). The input embedding is wrapped so that:
- virtual ids read a trainable row (l_p + l_i rows of width d: PreEmbed's whole |Θ| = d·(l_p+l_i));
- they are replaced by a real id before the frozen table, so they never reach the real embedding,
  and the LM head is untouched (generation can only emit real tokens).

PreLayer additionally learns "the activations after every Transformer layer" at those positions.
Choice: the trainable tensors are the hidden states ENTERING
each of the L layers, the embedding output for layer 0 (the PreEmbed rows) and the output of layer
i-1 for layer i, which a forward pre-hook on each block writes over the virtual positions. The last
layer's output is not replaced: at a prefix position it would only change logits that carry no loss,
and at the last infix position, whose logits predict the first target token, it would make that
prediction a trained constant that ignores the input. |Θ| = L·d·(l_p+l_i), exactly the paper's formula.
A consequence the paper does not discuss: the virtual positions carry nothing from the input (each
layer's input there is overwritten), so with an infix the first target token, predicted at the last
infix position, sees the input only through the last block's attention.

Under `generate()` the prompt pass sees the virtual ids and puts the replaced activations into the
KV cache; later steps feed only new real tokens and attend to the cached keys/values, so decoding
with and without cache agree (tested), with the usual attention mask and position handling.

Shared prefix (`rows_after_prefix`): under causal attention the l_p prefix positions see nothing
after them, so in a right-padded batch (training, label scoring) they compute the same
activations in every row. The prefix then runs once, batch 1, and each row runs only its own
tokens on top of the prefix's keys/values: the same numbers as running every row in full (tested),
at a fraction of the cost when l_p is long (PreEmbed, l_p = 256, on ~100-token MNLI rows: about
a third of the tokens per step). Left-padded generation keeps the plain path.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import DynamicCache

from peftrepro.errors import ConfigError
from peftrepro.interfaces import PromptWrap
from peftrepro.methods.base import AppliedMethod, MethodConfig, freeze_all, trainable_dtype
from peftrepro.methods.targets import backbone, blocks, hidden_width, layout

PREFIX_INITS = ("real_tokens", "normal")


@dataclass
class PrefixConfig(MethodConfig):
    prefix_length: int = 8  # l_p: virtual tokens before the prompt
    infix_length: int = 8  # l_i: virtual tokens between the prompt and the target
    # "real_tokens": start from the embeddings (PreEmbed) / hidden states (PreLayer) of randomly drawn
    # real tokens, as Li & Liang (2021) recommend; "normal": N(0, std of the embedding table).
    init: str = "real_tokens"

    def validate(self) -> None:
        for option in ("prefix_length", "infix_length"):
            value = getattr(self, option)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{self.name}: {option} must be an integer >= 0, got {value!r}")
        if self.n_virtual == 0:
            raise ConfigError(f"{self.name}: prefix_length + infix_length must be >= 1 (both are 0)")
        if self.init not in PREFIX_INITS:
            raise ConfigError(f"{self.name}: init must be one of {list(PREFIX_INITS)}, got {self.init!r}")

    @property
    def n_virtual(self) -> int:
        return self.prefix_length + self.infix_length


@dataclass
class PrefixEmbedConfig(PrefixConfig):
    name: ClassVar[str] = "prefix_embed"
    prefix_length: int = 256  # GPT-3 best in Table 15 / D.4
    infix_length: int = 8


@dataclass
class PromptTuningConfig(PrefixConfig):
    """Prompt tuning (Lester et al. 2021, arXiv 2104.08691): a soft prompt of l_p trainable embeddings
    prepended to the embedded input, nothing else; PreEmbed's machinery with no infix, |Θ| = d·l_p."""

    name: ClassVar[str] = "prompt_tuning"
    prefix_length: int = 100  # Lester et al.'s default prompt length (§3; §3.2 sweeps 1 to 150)
    infix_length: int = 0  # none, by definition

    def validate(self) -> None:
        super().validate()
        if self.infix_length != 0:
            raise ConfigError(f"prompt_tuning: infix_length must be 0 (a soft prompt goes before the input only), "
                              f"got {self.infix_length!r}; for virtual tokens after the input use prefix_embed")


@dataclass
class PrefixLayerConfig(PrefixConfig):
    name: ClassVar[str] = "prefix_layer"
    prefix_length: int = 8  # GPT-3 best in Table 15 / D.4
    infix_length: int = 8


class VirtualPositions:
    """Where the virtual tokens of the current forward pass are (set by the embedding, read by hooks)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None  # (batch, seq) bool
        self.index: torch.Tensor | None = None  # (batch, seq) virtual row per position

    def clear(self, *_: Any) -> None:
        self.mask = self.index = None


class VirtualTokenEmbedding(nn.Module):
    """The frozen token embedding plus trainable rows for ids >= its vocabulary size."""

    def __init__(self, base: nn.Embedding, n_virtual: int, prefix_length: int):
        super().__init__()
        self.base = base
        self.vocab_size = base.num_embeddings
        self.virtual = nn.Parameter(base.weight.new_empty(n_virtual, base.embedding_dim,
                                                          dtype=trainable_dtype(base.weight.dtype)))
        self.positions = VirtualPositions()
        # the ids every sequence starts with; a buffer so it follows the model's device, not saved
        self.register_buffer("prefix_ids", torch.arange(self.vocab_size, self.vocab_size + prefix_length,
                                                        device=base.weight.device), persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # weight tying and HF utilities look for `.weight`
        return self.base.weight

    def virtual_ids(self) -> list[int]:
        return list(range(self.vocab_size, self.vocab_size + self.virtual.shape[0]))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_virtual = input_ids >= self.vocab_size
        index = (input_ids - self.vocab_size).clamp(0, self.virtual.shape[0] - 1)
        # checked on the device without a host sync (a bool() here would stall every forward on GPU)
        torch._assert_async((input_ids < self.vocab_size + self.virtual.shape[0]).all(),
                            f"a token id is beyond this method's virtual ids "
                            f"{self.vocab_size}..{self.vocab_size + self.virtual.shape[0] - 1}")
        embedded = self.base(input_ids.masked_fill(is_virtual, 0))  # virtual ids never reach the table
        self.positions.mask, self.positions.index = is_virtual, index
        return torch.where(is_virtual.unsqueeze(-1), self.virtual[index].to(embedded.dtype), embedded)


class LayerActivations(nn.Module):
    """PreLayer's trainable hidden states entering layers 1..L-1 (layer 0's are the embedding rows)."""

    def __init__(self, n_layers: int, n_virtual: int, width: int, like: torch.Tensor):
        super().__init__()
        self.activations = nn.Parameter(like.new_empty(n_layers - 1, n_virtual, width))


class ReplaceVirtualHiddenStates:
    """Forward pre-hook of block `layer`: write the trainable activations over the virtual positions.

    A plain object (not a closure) so that deepcopy/pickling of the model copies it consistently.
    """

    def __init__(self, owner: LayerActivations, positions: VirtualPositions, layer: int):
        self.owner, self.positions, self.layer = owner, positions, layer

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        mask, index = self.positions.mask, self.positions.index
        if mask is None:
            return None
        # No `mask.any()` test (a host sync per layer): in incremental decoding steps the mask is
        # all False, the virtual positions already live in the KV cache, and the where is a no-op.
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[:2] != mask.shape:
            raise RuntimeError(f"prefix_layer: block {self.layer} got hidden states {tuple(hidden.shape)} but the "
                               f"embedding saw ids {tuple(mask.shape)}; pass input_ids, not inputs_embeds")
        trained = self.owner.activations[self.layer - 1][index].to(hidden.dtype)
        hidden = torch.where(mask.unsqueeze(-1), trained, hidden)
        return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})


def _std(tensor: torch.Tensor) -> float:
    return 1.0 if tensor.is_meta else float(tensor.detach().float().std())


def _real_token_sample(embedding: nn.Embedding, n: int) -> torch.Tensor:
    return torch.randint(0, embedding.num_embeddings, (1, n), device=embedding.weight.device)


def _wrap_embedding(model: nn.Module, config: PrefixConfig, sample: torch.Tensor | None) -> VirtualTokenEmbedding:
    body = backbone(model)
    path = layout(model).embedding
    base = body.get_submodule(path)
    wrapper = VirtualTokenEmbedding(base, config.n_virtual, config.prefix_length)
    with torch.no_grad():
        if sample is not None:  # through the module: some families scale their embedding (Gemma)
            wrapper.virtual.copy_(base(sample[0]))
        else:
            nn.init.normal_(wrapper.virtual, std=_std(base.weight))
    body.set_submodule(path, wrapper)
    body.register_forward_pre_hook(wrapper.positions.clear)  # no stale positions across calls
    return wrapper


@torch.no_grad()
def _hidden_states_of(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Hidden states entering each layer for real tokens `ids` (frozen model, eval mode)."""
    was_training = model.training
    model.eval()
    try:
        return backbone(model)(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        model.train(was_training)


def _init_sample(model: nn.Module, config: PrefixConfig) -> torch.Tensor | None:
    embedding = backbone(model).get_submodule(layout(model).embedding)
    if config.init != "real_tokens" or embedding.weight.is_meta:
        return None
    return _real_token_sample(embedding, config.n_virtual)


def _prompt(wrapper: VirtualTokenEmbedding, config: PrefixConfig) -> PromptWrap:
    ids = wrapper.virtual_ids()
    return PromptWrap(prefix_ids=tuple(ids[:config.prefix_length]), infix_ids=tuple(ids[config.prefix_length:]))


def apply_prefix_embed(model: nn.Module, config: PrefixEmbedConfig | PromptTuningConfig) -> AppliedMethod:
    freeze_all(model)
    wrapper = _wrap_embedding(model, config, _init_sample(model, config))
    return AppliedMethod(model=model, config=config, prompt=_prompt(wrapper, config))


def apply_prefix_layer(model: nn.Module, config: PrefixLayerConfig) -> AppliedMethod:
    freeze_all(model)
    layers = blocks(model)
    sample = _init_sample(model, config)
    initial = _hidden_states_of(model, sample) if sample is not None else None
    wrapper = _wrap_embedding(model, config, sample)
    # the hidden states' width, which can differ from the embedding's (OPT's word_embed_proj_dim)
    owner = LayerActivations(len(layers), config.n_virtual, hidden_width(model), wrapper.virtual)
    with torch.no_grad():
        if initial is not None and len(layers) > 1:
            owner.activations.copy_(torch.stack([initial[i][0] for i in range(1, len(layers))]))
        elif initial is None:
            nn.init.normal_(owner.activations, std=_std(wrapper.virtual))
    backbone(model).prefix_layer_activations = owner
    for index, block in enumerate(layers):
        if index > 0:
            block.register_forward_pre_hook(ReplaceVirtualHiddenStates(owner, wrapper.positions, index),
                                            with_kwargs=True)
    return AppliedMethod(model=model, config=config, prompt=_prompt(wrapper, config))


# ----------------------------------------------------------------------------- shared prefix


def shared_prefix(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor | None:
    """The prefix ids when `rows_after_prefix` may serve this forward pass, else None.

    Not taken: without a prefix method or prefix, for sequences no longer than the prefix, under
    active dropout (the rows would share one dropout mask on the prefix, a different training
    noise), and for compiled blocks (a cache object in the traced graph is untested there).
    """
    embedding = _virtual_embedding(model)
    if embedding is None or not 0 < len(embedding.prefix_ids) < input_ids.shape[1]:
        return None
    if model.training and _dropout_active(model):
        return None
    if any(getattr(block, "_compiled_call_impl", None) is not None for block in blocks(model)):
        return None  # nn.Module.compile() keeps the compiled forward there
    return embedding.prefix_ids


def rows_after_prefix(model: nn.Module, prefix_ids: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states of positions l_p.. of every row: the prefix runs once, each row on its keys/values.

    Every row that attends past the prefix must start with `prefix_ids` (right padding); rows that
    do not (the collator's dummy rows) get outputs nobody reads, as on the plain path.
    """
    n, body = len(prefix_ids), backbone(model)
    real_rows = attention_mask[:, n:].any(dim=1)
    starts_with_prefix = (input_ids[:, :n] == prefix_ids).all(dim=1)
    torch._assert_async((starts_with_prefix | ~real_rows).all(),
                        "shared prefix: a row does not start with the method's prefix ids (left padding?)")
    kv, keyword = DynamicCache(config=model.config), _cache_keyword(type(body))
    body(input_ids=prefix_ids[None], use_cache=True, **{keyword: kv})
    kv.batch_repeat_interleave(input_ids.shape[0])  # the prefix's keys/values, once per row
    return body(input_ids=input_ids[:, n:], attention_mask=attention_mask, use_cache=True,
                **{keyword: kv}).last_hidden_state


def index_after_prefix(flat_index: torch.Tensor, width: int, prefix_length: int) -> torch.Tensor:
    """Flat positions of (batch x width) as positions of (batch x (width - prefix_length))."""
    column = flat_index % width - prefix_length
    torch._assert_async((column >= 0).all(), "shared prefix: a scored position lies inside the prefix")
    return flat_index // width * (width - prefix_length) + column


def _virtual_embedding(model: nn.Module) -> VirtualTokenEmbedding | None:
    embedding = backbone(model).get_submodule(layout(model).embedding)
    return embedding if isinstance(embedding, VirtualTokenEmbedding) else None


def _dropout_active(model: nn.Module) -> bool:
    modules = any(isinstance(module, nn.Dropout) and module.p > 0 for module in model.modules())
    return modules or float(getattr(model.config, "attention_dropout", 0.0) or 0.0) > 0


@cache
def _cache_keyword(body_type: type) -> str:
    # transformers 5.x renames `past_key_values` to `cache` (the old name warns until 5.40)
    return "cache" if "cache" in inspect.signature(body_type.forward).parameters else "past_key_values"
