"""Bottleneck adapters: Adapter-H (Houlsby et al. 2019) and Adapter-L (Lin et al. 2020).

An adapter maps a sublayer output h to h + W_up·f(W_down·h + b_down) + b_up (2·d·r + r + d
parameters). It is injected by wrapping the module that produces a sublayer's output (the paper's
W_o and the MLP's W_down, wherever `methods.targets` finds them), so it runs after that projection
and before the block's residual add (no transformers fork), also in parallel-residual blocks
(GPT-J, GPT-NeoX, Phi, Falcon), where both sublayers read the same input:

- Adapter-H: two per block, after the attention output projection (W_o) and after the MLP's
  W_down. Only the adapters train (the paper's GPT-3 counts, e.g. 7,078,080 for r = 1, include
  no LayerNorm), so |Θ| = 2·L·(2dr + r + d).
- Adapter-L: one per block, after the MLP, with its own LayerNorm on the adapter input, as the
  LoRA paper describes it ("applied only after the MLP module and after a LayerNorm"):
  h + Adapter(LN(h)), |Θ| = L·(2dr + r + d) + 2·L·d. Lin et al. apply it to the whole block's
  output instead; the LoRA paper's wording and its counts (GPT-2 L r = 8 -> 875,808) fit both.

Dropout placement: on GPT-2 and BERT the sublayer's dropout follows the projection, so the adapter
sits just before that dropout rather than after it (identical at evaluation time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from peftrepro.errors import ConfigError
from peftrepro.methods.base import (
    AppliedMethod,
    MethodConfig,
    freeze_all,
    require_positive,
    trainable_dtype,
)
from peftrepro.methods.targets import blocks, module_shape, weight_target

NONLINEARITIES: dict[str, type[nn.Module]] = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


@dataclass
class AdapterConfig(MethodConfig):
    r: int = 8  # bottleneck width
    nonlinearity: str = "swish"
    # W_down ~ N(0, init_std) truncated at 2 std (Houlsby's near-identity init); W_up and both
    # biases start at zero, so the adapter is exactly the identity at step 0 (as LoRA's B = 0).
    init_std: float = 1e-2

    def validate(self) -> None:
        require_positive(self, "r", self.r)
        if self.nonlinearity not in NONLINEARITIES:
            raise ConfigError(f"{self.name}: nonlinearity must be one of {list(NONLINEARITIES)}, "
                              f"got {self.nonlinearity!r}")
        if not self.init_std >= 0:
            raise ConfigError(f"{self.name}: init_std must be >= 0, got {self.init_std!r}")


@dataclass
class AdapterHConfig(AdapterConfig):
    name: ClassVar[str] = "adapter_h"
    nonlinearity: str = "swish"  # the authors' RoBERTa Houlsby adapter (examples/NLU adapter.py)


@dataclass
class AdapterLConfig(AdapterConfig):
    name: ClassVar[str] = "adapter_l"
    nonlinearity: str = "relu"  # Lin et al. (2020)


class Adapter(nn.Module):
    """h + up(f(down(norm(h)))) with `norm` an extra LayerNorm (Adapter-L) or the identity (Adapter-H)."""

    def __init__(self, d: int, r: int, nonlinearity: str, init_std: float, layer_norm: bool,
                 like: torch.Tensor):
        super().__init__()
        factory = {"device": like.device, "dtype": trainable_dtype(like.dtype)}
        self.norm = nn.LayerNorm(d, **factory) if layer_norm else nn.Identity()
        self.down = nn.Linear(d, r, **factory)
        self.act = NONLINEARITIES[nonlinearity]()
        self.up = nn.Linear(r, d, **factory)
        nn.init.trunc_normal_(self.down.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
        for tensor in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(tensor)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dtype = self.down.weight.dtype  # fp32 over a half-precision base, back in h's
        return h + self.up(self.act(self.down(self.norm(h.to(dtype))))).to(h.dtype)


class WithAdapter(nn.Module):
    """A frozen projection followed by an adapter on its output."""

    def __init__(self, base: nn.Module, adapter: Adapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.adapter(self.base(*args, **kwargs))


def sublayer_outputs(model: nn.Module, config: AdapterConfig, weights: tuple[str, ...]) -> list[str]:
    """The module paths (inside a block) whose outputs the adapters follow; ConfigError if one is not mapped."""
    try:
        return [weight_target(model, weight).module for weight in weights]
    except ConfigError as error:
        raise ConfigError(f"{config.name} goes after the output projection(s) {list(weights)} of every block: "
                          f"{error}") from None


def _insert_adapters(model: nn.Module, config: AdapterConfig, weights: tuple[str, ...], layer_norm: bool) -> None:
    points = sublayer_outputs(model, config, weights)
    freeze_all(model)
    for block in blocks(model):
        for path in points:
            base = block.get_submodule(path)
            d = module_shape(base)[1]  # the sublayer's output width (the residual stream's)
            adapter = Adapter(d, config.r, config.nonlinearity, config.init_std, layer_norm, base.weight)
            block.set_submodule(path, WithAdapter(base, adapter))


ADAPTER_H_POINTS = ("W_o", "W_down")
ADAPTER_L_POINTS = ("W_down",)


def apply_adapter_h(model: nn.Module, config: AdapterHConfig) -> AppliedMethod:
    _insert_adapters(model, config, ADAPTER_H_POINTS, layer_norm=False)
    return AppliedMethod(model=model, config=config)


def apply_adapter_l(model: nn.Module, config: AdapterLConfig) -> AppliedMethod:
    _insert_adapters(model, config, ADAPTER_L_POINTS, layer_norm=True)
    return AppliedMethod(model=model, config=config)
