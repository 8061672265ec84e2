"""The check that a 4-bit base is what the model computes with, and stays near the weights it replaced."""

from __future__ import annotations

import torch
from transformers.pytorch_utils import Conv1D

from peftrepro.methods.quantize import dequantized_weight
from peftrepro.methods.targets import block_linears, unwrapped

# bitsandbytes 0.50's CPU dequantisation scrambles a layer whose input width is 32 (not a multiple of its
# blocks of 64): the models checked here are built this wide, as every real backbone is
WIDE_ENOUGH = {"hidden_size": 64, "head_dim": 16}

# NF4's and FP4's widest gap between two levels is a third of a block's absmax: a weight rounds by at most
# half of it, plus the double quantisation's rounding of absmax itself
ROUNDING_BOUND = 0.2


def assert_computes_with_its_4bit_weights(quantized: torch.nn.Module, original: torch.nn.Module,
                                          ids: torch.Tensor) -> None:
    """`quantized` (4-bit blocks, LoRA's B = 0) against `original`, the same model in full precision: each 4-bit
    weight is within the rounding bound of the one it replaced (not a copy of it), and the logits are those of
    `original` computing with the dequantised weights. `original` is changed in place."""
    for (block, path), (original_block, _) in zip(block_linears(quantized), block_linears(original)):
        layer = original_block.get_submodule(path)
        weight = layer.weight.detach().T if isinstance(layer, Conv1D) else layer.weight.detach()
        stored = dequantized_weight(unwrapped(block.get_submodule(path))).to(weight.dtype)
        error = (stored - weight).abs().max()
        assert 0 < error <= ROUNDING_BOUND * weight.abs().max(), f"{path}: 4-bit error {error}"
        with torch.no_grad():
            layer.weight.copy_(stored.T if isinstance(layer, Conv1D) else stored)
    torch.testing.assert_close(quantized(input_ids=ids).logits, original(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
