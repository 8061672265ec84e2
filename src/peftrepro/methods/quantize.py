"""QLoRA's frozen base (Dettmers et al. 2023, arXiv 2305.14314): the blocks' linear layers stored in
4 bits through bitsandbytes' `Linear4bit`, LoRA on top (method `lora` with `quantize: {...}`).

- Storage: NF4 (4-bit NormalFloat, QLoRA §3) or FP4, blockwise: one absmax constant per `blocksize`
  weights (QLoRA: 64). Double quantisation (DQ) stores those constants in 8 bits with one fp32
  constant per 256 of them (bitsandbytes' `compress_statistics`).
- Computation: every forward dequantises the weight to `compute_dtype` (fp32 or bf16) for its matmul;
  gradients flow through to the input and to LoRA's factors, never to the 4-bit weight.
- What is quantised: every linear layer of every block that holds a paper matrix in the model's
  layout (methods/targets.py: W_q ... W_down, a fused projection such as GPT-2's c_attn once), as
  QLoRA does for all of the base's linear layers, whichever of them LoRA adapts. The embedding
  and the LM head tied to it stay in full precision, as bitsandbytes' own 4-bit loading keeps the
  output layer.
- A 4-bit W0 cannot hold W0 + s·BA: merging would re-quantise it and change the model, so LoRA
  refuses to merge a quantised base, and QLoRA runs evaluate unmerged (`merge_for_eval=false`).

bitsandbytes is an optional dependency (`pip install 'peft-repro[qlora]'`); only this module imports
it, and only when a quantised base is asked for. Version 0.50 runs 4-bit layers on CPU as on CUDA, but
its CPU kernel reads some layers back wrongly where their input width is not a multiple of the block
(64): each layer is checked once after quantising (`reads_back_as_stored`), and those it misreads are
named in the log and in the record (`quantized.misread`; none in SmolLM2, whose widths are multiples
of 64).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftrepro.errors import ConfigError
from peftrepro.methods.targets import block_linears, matrices_text, uncovered_block_matrices

log = logging.getLogger(__name__)

QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
INSTALL_HINT = "pip install 'peft-repro[qlora]'"


@dataclass(frozen=True)
class QuantizeConfig:
    """How the frozen base is stored: LoRA's `quantize` option, checked here."""

    quant_type: str = "nf4"  # nf4 | fp4
    double_quant: bool = True  # DQ: the absmax constants themselves in 8 bits
    compute_dtype: str = "fp32"  # the dtype each 4-bit weight is dequantised to for its matmul
    blocksize: int = 64  # weights per quantisation constant (QLoRA: 64)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> QuantizeConfig:
        if not isinstance(options, Mapping):
            raise ConfigError(f"lora: quantize must be a mapping such as {{quant_type: nf4, double_quant: true}} "
                              f"or null, got {options!r}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(f"lora: unknown quantize option(s) {unknown}; valid: {valid}")
        config = cls(**options)
        config.validate()
        return config

    def validate(self) -> None:
        if self.quant_type not in QUANT_TYPES:
            raise ConfigError(f"lora: quantize.quant_type must be one of {list(QUANT_TYPES)}, got {self.quant_type!r}")
        if not isinstance(self.double_quant, bool):
            raise ConfigError(f"lora: quantize.double_quant must be true or false, got {self.double_quant!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"lora: quantize.compute_dtype must be one of {list(COMPUTE_DTYPES)}, "
                              f"got {self.compute_dtype!r}")
        if self.blocksize not in (64, 128, 256, 512, 1024, 2048, 4096):  # bitsandbytes' blockwise kernels
            raise ConfigError(f"lora: quantize.blocksize must be a power of 2 from 64 to 4096, got {self.blocksize!r}")

    def options(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        """As the QLoRA paper names the storage, e.g. "NF4 + DQ"."""
        return self.quant_type.upper() + (" + DQ" if self.double_quant else "")


def require_bitsandbytes() -> Any:
    """The bitsandbytes module, or one ConfigError saying how to install it."""
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError(f"lora: method.quantize stores the base in 4 bits through bitsandbytes, which is not "
                          f"installed: {INSTALL_HINT}") from None
    return bitsandbytes


def quantize_block_linears(model: nn.Module, config: QuantizeConfig) -> dict[str, Any]:
    """Replace every linear layer of every block (`targets.block_linears`) by a frozen 4-bit copy
    (in place); what the run record says of it: how many, the blocks' matrices left as loaded, and the
    layers bitsandbytes reads back as other weights than it stored (`reads_back_as_stored`)."""
    bnb = require_bitsandbytes()
    layers = block_linears(model)
    not_quantized = uncovered_block_matrices(model)
    if not_quantized:
        log.warning("4-bit storage applies to the blocks' linear layers only; left as loaded: %s",
                    matrices_text(not_quantized))
    misread: dict[str, int] = {}
    for block, path in layers:
        quantized = _to_4bit(block.get_submodule(path), config, bnb)
        block.set_submodule(path, quantized)
        if not reads_back_as_stored(quantized):
            misread[path] = misread.get(path, 0) + 1
    if misread:  # counted in layers, one per block
        log.warning("bitsandbytes %s reads 4-bit weights back wrongly in %s: the forward pass computes with other "
                    "weights than those quantised (its CPU kernel does so for some input widths that are not a "
                    "multiple of %d, such as 32); use a GPU, or a model whose widths are multiples of %d. The "
                    "record names them (quantized.misread)", bnb.__version__,
                    ", ".join(f"{path} ({count} layers)" for path, count in misread.items()),
                    config.blocksize, config.blocksize)
    return {"quantized_layers": len(layers), "not_quantized": not_quantized, "misread": misread}


def reads_back_as_stored(quantized: nn.Module) -> bool:
    """Whether bitsandbytes dequantises the 4-bit layer as its packed codes and constants say (decoded here:
    two codes per byte, high nibble first, each times its block's absmax). bitsandbytes 0.50's CPU kernel
    does not for some input widths that are not a multiple of its block: from the second block on, it
    returns weights of other blocks, though what it packed is right."""
    bnb = require_bitsandbytes()
    state = quantized.weight.quant_state
    absmax = state.absmax
    if state.nested:  # double quantisation: the absmax constants are themselves 8-bit codes
        absmax = bnb.functional.dequantize_blockwise(state.absmax, state.state2) + state.offset
    packed = quantized.weight.data.view(torch.uint8).flatten()
    codes = torch.stack((packed >> 4, packed & 15), dim=1).flatten().long()[:state.shape.numel()]
    expected = state.code.float()[codes] * absmax.float().repeat_interleave(state.blocksize)[:codes.numel()]
    return torch.allclose(dequantized_weight(quantized).float().flatten(), expected, rtol=1e-3, atol=1e-8)


def _to_4bit(layer: nn.Module, config: QuantizeConfig, bnb: Any) -> nn.Module:
    if is_4bit(layer) or not isinstance(layer, (nn.Linear, Conv1D)):
        raise ConfigError(f"lora: cannot quantise a {type(layer).__name__}; 4-bit storage applies to nn.Linear "
                          "and Conv1D layers that are not quantised yet")
    weight = layer.weight.detach()
    if isinstance(layer, Conv1D):  # Conv1D stores W as d_in × d_out; Linear4bit as nn.Linear, d_out × d_in
        weight = weight.T
    out_features, in_features = weight.shape
    # built on `meta` (no throw-away init of a full-precision weight), then given the real tensors
    quantized = bnb.nn.Linear4bit(in_features, out_features, bias=layer.bias is not None,
                                  compute_dtype=COMPUTE_DTYPES[config.compute_dtype],
                                  compress_statistics=config.double_quant, quant_type=config.quant_type,
                                  device="meta")
    quantized.weight = bnb.nn.Params4bit(weight.contiguous().clone(), requires_grad=False,
                                         blocksize=config.blocksize, compress_statistics=config.double_quant,
                                         quant_type=config.quant_type, module=quantized)
    if layer.bias is not None:
        quantized.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
    # On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a weight for inference at the first eval
    # forward and never packs it back, so training after an evaluation (eval_every_epoch) fails in its
    # kernel: keep the one layout that trains and evaluates alike.
    quantized.support_avx512bf16_for_cpu = False
    return quantized.to(weight.device)  # bitsandbytes quantises a weight when it is moved to its device


def is_4bit(module: nn.Module) -> bool:
    """Whether `module` holds a 4-bit weight (bitsandbytes' Params4bit carries its quantisation state)."""
    return getattr(getattr(module, "weight", None), "quant_state", None) is not None


def logical_numel(parameter: torch.Tensor) -> int:
    """The number of weights a parameter stands for (a 4-bit one packs two per byte)."""
    state = getattr(parameter, "quant_state", None)
    return parameter.numel() if state is None else int(state.shape.numel())


def constants_bytes(parameter: torch.Tensor) -> int:
    """Bytes of a 4-bit weight's quantisation constants (absmax, its lookup code, and under double
    quantisation the second level's constants); 0 for an ordinary weight."""
    state = getattr(parameter, "quant_state", None)
    total = 0
    while state is not None:
        total += sum(t.numel() * t.element_size() for t in (state.absmax, state.code, state.offset)
                     if isinstance(t, torch.Tensor))
        state = state.state2 if state.nested else None
    return total


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """A 4-bit layer's weight as its forward computes with it (d_out × d_in)."""
    bnb = require_bitsandbytes()
    return bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
