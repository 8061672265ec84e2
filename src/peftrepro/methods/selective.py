"""Methods that train a subset of the model's own parameters: FT, FT-TopK, BitFit (§5.1), and the
empty subset, `none`: the backbone as loaded, evaluated without training (each task's zero-shot
baseline, against which a run that did not learn is recognised)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from peftrepro.errors import ConfigError, NotApplicableError
from peftrepro.methods.base import (
    AppliedMethod,
    MethodConfig,
    freeze_all,
    require_positive,
)
from peftrepro.methods.targets import blocks, layout


@dataclass
class NoAdaptationConfig(MethodConfig):
    """No adaptation: every weight frozen and no training step (the zero-shot baseline)."""

    name: ClassVar[str] = "none"
    trains: ClassVar[bool] = False


@dataclass
class FullFTConfig(MethodConfig):
    """FT: "all model parameters undergo gradient updates" (embeddings, LM head and norms included)."""

    name: ClassVar[str] = "ft"


@dataclass
class FTTopConfig(MethodConfig):
    """FT-TopK: only the last k Transformer blocks train, every parameter inside them.

    The final LayerNorm, the embeddings and the LM head stay frozen: on GPT-2 M FT-Top2 is then
    exactly 2 blocks × (12·d² + 13·d) = 25,192,448, the paper's (Li & Liang's) 25.19M.
    """

    name: ClassVar[str] = "ft_top"
    k: int = 2

    def validate(self) -> None:
        require_positive(self, "k", self.k)


@dataclass
class BitFitConfig(MethodConfig):
    """BitFit (Zaken et al. 2021): "only train the bias vectors while freezing everything else"."""

    name: ClassVar[str] = "bitfit"
    # Zaken et al. train every bias term, the LayerNorm biases (β) among them; set false to train
    # only the biases of the linear layers. The paper's GPT-3 14.2M count is unexplained either way.
    layernorm_bias: bool = True


def apply_no_adaptation(model: nn.Module, config: NoAdaptationConfig) -> AppliedMethod:
    freeze_all(model)
    return AppliedMethod(model=model, config=config)


def apply_full_ft(model: nn.Module, config: FullFTConfig) -> AppliedMethod:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return AppliedMethod(model=model, config=config)


def apply_ft_top(model: nn.Module, config: FTTopConfig) -> AppliedMethod:
    layers = blocks(model)
    if config.k > len(layers):
        raise ConfigError(f"ft_top: k={config.k} but the {layout(model).family} model has only "
                          f"{len(layers)} blocks; choose 1 <= k <= {len(layers)}")
    freeze_all(model)
    for block in layers[len(layers) - config.k:]:
        for parameter in block.parameters():
            parameter.requires_grad_(True)
    return AppliedMethod(model=model, config=config)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's, or a family's own class (OlmoLayerNorm, CohereLayerNorm, ...)."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__.endswith("Norm")


def bitfit_biases(model: nn.Module, layernorm_bias: bool) -> list[nn.Parameter]:
    """Every bias vector of the model (a shared one once), those of normalisation layers if asked."""
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        bias = module._parameters.get("bias")
        if bias is not None and (layernorm_bias or not is_norm(module)):
            found.setdefault(id(bias), bias)
    return list(found.values())


def apply_bitfit(model: nn.Module, config: BitFitConfig) -> AppliedMethod:
    # no layout needed: BitFit applies to any model that has biases
    freeze_all(model)
    biases = bitfit_biases(model, config.layernorm_bias)
    if not biases:
        raise NotApplicableError(f"bitfit: this {model.config.model_type} model has no bias parameters "
                          "(e.g. Llama's linear layers and RMSNorm are bias-free), so BitFit would train "
                          "nothing; choose another method (lora, adapter_h, ...) for this model")
    for parameter in biases:
        parameter.requires_grad_(True)
    return AppliedMethod(model=model, config=config)
