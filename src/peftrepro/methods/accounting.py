"""Trainable-parameter counts: what the modules hold, and the paper's formulas (§5.1, App. F.2).

`count_parameters` sums `numel` over the model's parameters (shared ones, e.g. GPT-2's tied
embedding / LM head, once; a 4-bit weight as the weights it stands for). The paper's closed formulas
(2·L̂·d·r, ...) serve the parameter table (`peftrepro.report.params`); `formula_params` applies each
method's definition to the real module shapes of any family, so tests can hold the parameters a
method creates to it. `weight_report` is what a run record says of the weights as stored and used.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from peftrepro.errors import ConfigError
from peftrepro.methods.adapters import (
    ADAPTER_H_POINTS,
    ADAPTER_L_POINTS,
    AdapterConfig,
    AdapterHConfig,
    AdapterLConfig,
)
from peftrepro.methods.base import MethodConfig
from peftrepro.methods.lora import LoRAConfig
from peftrepro.methods.prefix import PrefixConfig, PrefixLayerConfig
from peftrepro.methods.pruning import PruningConfig, masked_weight
from peftrepro.methods.quantize import constants_bytes, dequantized_weight, is_4bit, logical_numel
from peftrepro.methods.selective import BitFitConfig, FTTopConfig, FullFTConfig, bitfit_biases
from peftrepro.methods.targets import (
    backbone,
    block_linears,
    blocks,
    hidden_width,
    layout,
    module_shape,
    unwrapped,
    weight_target,
)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a parameter shared by two modules counts once."""
    trainable = total = 0
    for parameter in model.parameters():
        count = logical_numel(parameter)
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total


def weight_report(model: nn.Module) -> dict[str, Any]:
    """The weights as a run leaves them: bytes as stored (a 4-bit weight packed, with its
    quantisation constants), frozen and trainable apart, and the share of nonzero weights in the
    blocks' linear layers as the forward uses them (after a pruning mask; a 4-bit weight dequantised)."""
    stored = {True: 0, False: 0}
    for parameter in model.parameters():
        stored[parameter.requires_grad] += parameter.numel() * parameter.element_size() + constants_bytes(parameter)
    return {"frozen_bytes": stored[False], "trainable_bytes": stored[True],
            "block_linear_density": block_linear_density(model)}


@torch.no_grad()
def block_linear_density(model: nn.Module) -> float | None:
    """The share of nonzero weights in the blocks' linear layers, as the forward computes with them
    (None where the layout maps no linear layer)."""
    try:
        linears = block_linears(model)
    except ConfigError:  # a family whose blocks map no paper matrix (e.g. Mamba): ft and bitfit still run
        return None
    nonzero = total = 0
    for block, path in linears:
        weight = _effective_weight(unwrapped(block.get_submodule(path)))
        nonzero += int(torch.count_nonzero(weight))
        total += weight.numel()
    return nonzero / total if total else 1.0


def _effective_weight(layer: nn.Module) -> torch.Tensor:
    if hasattr(layer, "weight_mask"):  # pruned through torch.nn.utils.prune
        return masked_weight(layer)
    if is_4bit(layer):
        return dequantized_weight(layer)
    return layer.weight


def lora_params(n_matrices: int, d_model: int, r: int) -> int:
    """|Θ| = 2 × L̂_LoRA × d_model × r (square d×d matrices)."""
    return 2 * n_matrices * d_model * r


def adapter_params(n_adapters: int, d_model: int, r: int, n_layernorms: int) -> int:
    """|Θ| = L̂_Adpt × (2·d_model·r + r + d_model) + 2 × L̂_LN × d_model."""
    return n_adapters * (2 * d_model * r + r + d_model) + 2 * n_layernorms * d_model


def prefix_embed_params(d_model: int, prefix_length: int, infix_length: int) -> int:
    """|Θ| = d_model × (l_p + l_i)."""
    return d_model * (prefix_length + infix_length)


def prefix_layer_params(n_layers: int, d_model: int, prefix_length: int, infix_length: int) -> int:
    """|Θ| = L × d_model × (l_p + l_i)."""
    return n_layers * d_model * (prefix_length + infix_length)


def gpt2_block_params(d_model: int) -> int:
    """One GPT-2 block: W_qkv, W_o, W_up, W_down with biases (12·d² + 9·d) plus two LayerNorms (4·d)."""
    return 12 * d_model * d_model + 13 * d_model


def gpt2_total_params(d_model: int, n_layers: int, vocab_size: int, n_positions: int) -> int:
    """Whole GPT-2 LM: token + position embeddings, L blocks, final LayerNorm (LM head tied)."""
    return (vocab_size + n_positions) * d_model + n_layers * gpt2_block_params(d_model) + 2 * d_model


def formula_params(model: nn.Module, config: MethodConfig) -> int | None:
    """The count `config` should train on `model`, by each method's definition, from the base model's
    module shapes (read through the wrappers a method adds), never from the parameters the method made.

    LoRA: r·(d_in + d_out) per adapted matrix and block, d_out the rows the matrix owns in a fused
    module (the paper's 2·d·r for square matrices, right for grouped-query W_k / W_v, OPT's ffn_dim
    and GPT-BigCode's multi-query k/v). Adapters: 2·d·r + r + d per adapter with d the width of the
    projection it follows, + 2·d per Adapter-L LayerNorm. PreEmbed: the embedding width per virtual
    token (prompt tuning: PreEmbed without infix); PreLayer adds the hidden width per virtual token and
    layer after the first. FT-Top-k: the parameters of the last k blocks; pruning: those of every block;
    BitFit: the bias vectors; FT: every parameter. None: no formula.
    """
    if isinstance(config, LoRAConfig):
        return _lora_formula(model, config)
    if isinstance(config, (AdapterHConfig, AdapterLConfig)):
        return _adapter_formula(model, config)
    if isinstance(config, PrefixConfig):
        return _prefix_formula(model, config)
    if isinstance(config, FTTopConfig):
        return _unique_numel(p for block in blocks(model)[-config.k:] for p in block.parameters())
    if isinstance(config, PruningConfig):  # every block trains; pruning masks weights, not parameters
        return _unique_numel(p for block in blocks(model) for p in block.parameters())
    if isinstance(config, BitFitConfig):
        return _unique_numel(bitfit_biases(model, config.layernorm_bias))
    if isinstance(config, FullFTConfig):
        return count_parameters(model)[1]
    return None


def _lora_formula(model: nn.Module, config: LoRAConfig) -> int:
    total = 0
    for block in blocks(model):
        for weight, rank in config.rank_per_weight().items():
            target = weight_target(model, weight)
            d_in, d_out = module_shape(block.get_submodule(target.module))
            total += rank * (d_in + (d_out if target.rows is None else len(target.rows)))
    return total


def _adapter_formula(model: nn.Module, config: AdapterConfig) -> int:
    layer_norm = isinstance(config, AdapterLConfig)
    points = ADAPTER_L_POINTS if layer_norm else ADAPTER_H_POINTS
    paths = [weight_target(model, weight).module for weight in points]
    widths = [module_shape(block.get_submodule(path))[1] for block in blocks(model) for path in paths]
    return sum(adapter_params(1, d, config.r, n_layernorms=int(layer_norm)) for d in widths)


def _prefix_formula(model: nn.Module, config: PrefixConfig) -> int:
    embedding = unwrapped(backbone(model).get_submodule(layout(model).embedding))
    total = prefix_embed_params(embedding.embedding_dim, config.prefix_length, config.infix_length)
    if isinstance(config, PrefixLayerConfig):
        total += prefix_layer_params(len(blocks(model)) - 1, hidden_width(model), config.prefix_length,
                                     config.infix_length)
    return total


def _unique_numel(parameters: Iterable[nn.Parameter]) -> int:
    return sum({id(p): p.numel() for p in parameters}.values())
