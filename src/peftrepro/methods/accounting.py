"""Trainable-parameter counts: what the modules hold, and the paper's formulas (§5.1, App. F.2).

`count_parameters` sums `numel` over the model's parameters (shared ones, e.g. GPT-2's tied
embedding / LM head, once; a 4-bit weight as the weights it stands for). The formulas below are
written from the paper, from the model's config and the method's options only, so tests can hold
the modules to them. `weight_report` is what a run record says of the weights as stored and used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftrepro.methods.adapters import AdapterHConfig, AdapterLConfig
from peftrepro.methods.base import MethodConfig
from peftrepro.methods.lora import LoRAConfig
from peftrepro.methods.prefix import PrefixEmbedConfig, PrefixLayerConfig, PromptTuningConfig
from peftrepro.methods.pruning import PruningConfig, masked_weight
from peftrepro.methods.quantize import constants_bytes, dequantized_weight, is_4bit, logical_numel
from peftrepro.methods.selective import BitFitConfig, FTTopConfig, FullFTConfig
from peftrepro.methods.targets import arch_spec, block_linear_paths, blocks, model_dims, weight_shape


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
def block_linear_density(model: nn.Module) -> float:
    """The share of nonzero weights in the blocks' linear layers, as the forward computes with them."""
    nonzero = total = 0
    for block in blocks(model):
        for path in block_linear_paths(model):
            weight = _effective_weight(_unwrapped(block.get_submodule(path)))
            nonzero += int(torch.count_nonzero(weight))
            total += weight.numel()
    return nonzero / total if total else 1.0


def _unwrapped(module: nn.Module) -> nn.Module:
    """The layer under a method's wrapper (LoRA's LoRAModule and the adapters' WithAdapter keep it as `base`)."""
    while isinstance(getattr(module, "base", None), nn.Module):
        module = module.base
    return module


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


def prompt_tuning_params(d_model: int, prefix_length: int) -> int:
    """|Θ| = d_model × l_p (Lester et al.: the soft prompt's embeddings only)."""
    return d_model * prefix_length


def prefix_layer_params(n_layers: int, d_model: int, prefix_length: int, infix_length: int) -> int:
    """|Θ| = L × d_model × (l_p + l_i)."""
    return n_layers * d_model * (prefix_length + infix_length)


def gpt2_block_params(d_model: int) -> int:
    """One GPT-2 block: W_qkv, W_o, W_up, W_down with biases (12·d² + 9·d) plus two LayerNorms (4·d)."""
    return 12 * d_model * d_model + 13 * d_model


def gpt2_total_params(d_model: int, n_layers: int, vocab_size: int, n_positions: int) -> int:
    """Whole GPT-2 LM: token + position embeddings, L blocks, final LayerNorm (LM head tied)."""
    return (vocab_size + n_positions) * d_model + n_layers * gpt2_block_params(d_model) + 2 * d_model


def block_params(family: str, d: int, d_kv: int, d_ff: int) -> int:
    """One Transformer block of `family`: attention, MLP and norms with the family's biases."""
    if family == "gpt2":  # fused W_qkv, W_o, W_up, W_down all with bias; 2 LayerNorms
        return (3 * d * d + 3 * d) + (d * d + d) + (d * d_ff + d_ff) + (d_ff * d + d) + 4 * d
    if family == "llama":  # no biases; gated MLP (W_gate, W_up, W_down); 2 RMSNorms (weight only)
        return 2 * d * d + 2 * d * d_kv + 3 * d * d_ff + 2 * d
    # bert / roberta: q, k, v, o and both MLP matrices with bias; 2 LayerNorms
    return 4 * (d * d + d) + (d * d_ff + d_ff) + (d_ff * d + d) + 4 * d


def gpt2_bitfit_params(d: int, d_ff: int, n_layers: int, layernorm_bias: bool = True) -> int:
    """GPT-2 bias vectors: per block W_qkv (3d), W_o (d), W_up (d_ff), W_down (d) [+ 2 LN β], + final LN β."""
    per_block = 3 * d + d + d_ff + d + (2 * d if layernorm_bias else 0)
    return n_layers * per_block + (d if layernorm_bias else 0)


def formula_params(model: nn.Module, config: MethodConfig) -> int | None:
    """The count for `config` on `model` from config sizes alone (None: no closed formula written).

    LoRA uses r·(d_in + d_out) per matrix, which is the paper's 2·d·r for square matrices and
    stays right for grouped-query W_k / W_v and for the MLP matrices.
    """
    dims = model_dims(model.config)
    if isinstance(config, LoRAConfig):
        spec = arch_spec(model)
        return dims.n_layers * sum(rank * sum(weight_shape(model.config, weight, spec))
                                   for weight, rank in config.rank_per_weight().items())
    if isinstance(config, AdapterHConfig):
        return adapter_params(2 * dims.n_layers, dims.d, config.r, n_layernorms=0)
    if isinstance(config, AdapterLConfig):
        return adapter_params(dims.n_layers, dims.d, config.r, n_layernorms=dims.n_layers)
    if isinstance(config, PrefixLayerConfig):
        return prefix_layer_params(dims.n_layers, dims.d, config.prefix_length, config.infix_length)
    if isinstance(config, PrefixEmbedConfig):
        return prefix_embed_params(dims.d, config.prefix_length, config.infix_length)
    if isinstance(config, PromptTuningConfig):
        return prompt_tuning_params(dims.d, config.prefix_length)
    if isinstance(config, FTTopConfig):
        return config.k * block_params(arch_spec(model).family, dims.d, dims.d_kv, dims.d_ff)
    if isinstance(config, PruningConfig):  # every block trains; pruning masks weights, not parameters
        return dims.n_layers * block_params(arch_spec(model).family, dims.d, dims.d_kv, dims.d_ff)
    if isinstance(config, BitFitConfig) and arch_spec(model).family == "gpt2":
        return gpt2_bitfit_params(dims.d, dims.d_ff, dims.n_layers, config.layernorm_bias)
    if isinstance(config, FullFTConfig) and arch_spec(model).family == "gpt2":
        config_ = model.config
        return gpt2_total_params(dims.d, dims.n_layers, config_.vocab_size, config_.n_positions)
    return None
