"""The methods by name: `make_method_config(name, options)` then `apply_method(model, config)`."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

from torch import nn

from peftrepro.errors import ConfigError
from peftrepro.methods.adapters import (
    AdapterHConfig,
    AdapterLConfig,
    apply_adapter_h,
    apply_adapter_l,
)
from peftrepro.methods.base import AppliedMethod, MethodConfig, MethodSpec
from peftrepro.methods.interop import PeftAdapterConfig, apply_peft_adapter
from peftrepro.methods.lora import LoRAConfig, apply_lora
from peftrepro.methods.prefix import (
    PrefixEmbedConfig,
    PrefixLayerConfig,
    PromptTuningConfig,
    apply_prefix_embed,
    apply_prefix_layer,
)
from peftrepro.methods.pruning import (
    MagnitudePruningConfig,
    MovementPruningConfig,
    apply_magnitude_pruning,
    apply_movement_pruning,
)
from peftrepro.methods.selective import (
    BitFitConfig,
    FTTopConfig,
    FullFTConfig,
    NoAdaptationConfig,
    apply_bitfit,
    apply_ft_top,
    apply_full_ft,
    apply_no_adaptation,
)

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("lora", LoRAConfig, apply_lora, "low-rank update (α/r)·BA on chosen weight matrices"),
    MethodSpec("adapter_h", AdapterHConfig, apply_adapter_h, "Houlsby: adapters after attention and MLP"),
    MethodSpec("adapter_l", AdapterLConfig, apply_adapter_l, "Lin et al.: one adapter + LayerNorm after the MLP"),
    MethodSpec("prefix_layer", PrefixLayerConfig, apply_prefix_layer, "trainable activations at every layer"),
    MethodSpec("prefix_embed", PrefixEmbedConfig, apply_prefix_embed, "trainable virtual-token embeddings"),
    MethodSpec("prompt_tuning", PromptTuningConfig, apply_prefix_embed,
               "Lester et al.: a soft prompt of trainable embeddings before the input, no infix"),
    MethodSpec("ft", FullFTConfig, apply_full_ft, "full fine-tuning"),
    MethodSpec("ft_top", FTTopConfig, apply_ft_top, "fine-tune only the last k blocks"),
    MethodSpec("bitfit", BitFitConfig, apply_bitfit, "train only the bias vectors"),
    MethodSpec("magnitude_pruning", MagnitudePruningConfig, apply_magnitude_pruning,
               "fine-tune the blocks while pruning their linear layers to the largest |W| (cubic schedule)"),
    MethodSpec("movement_pruning", MovementPruningConfig, apply_movement_pruning,
               "fine-tune the blocks while pruning their linear layers to the weights moving away from 0"),
    MethodSpec("none", NoAdaptationConfig, apply_no_adaptation, "no adaptation, no training (zero-shot baseline)"),
    MethodSpec("peft_adapter", PeftAdapterConfig, apply_peft_adapter, "a peft LoRA adapter, evaluated as it is"),
)}


def _plain(value: Any) -> Any:
    """Hydra's ListConfig / DictConfig -> list / dict, so configs hold plain, JSON-able values."""
    try:
        from omegaconf import OmegaConf
        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra, a dependency
        pass
    return value


def make_method_config(name: str, options: Mapping[str, Any] | None = None) -> MethodConfig:
    """Build and validate the option dataclass of method `name` (a `name` key in options must agree)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid methods: {sorted(METHODS)}")
    config_cls = METHODS[name].config_cls
    options = {key: _plain(value) for key, value in dict(_plain(options) or {}).items()}
    if options.pop("name", name) != name:
        raise ConfigError(f"method options name a different method than {name!r}: {options}")
    valid = [f.name for f in fields(config_cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"method {name!r}: unknown option(s) {unknown}; valid options: {valid}")
    return config_cls(**options)


def apply_method(model: nn.Module, config: MethodConfig) -> AppliedMethod:
    """Apply `config`'s method to `model` in place; only the method's parameters keep requires_grad."""
    if config.name not in METHODS or not isinstance(config, METHODS[config.name].config_cls):
        raise ConfigError(f"apply_method needs a config from make_method_config, got {type(config).__name__}")
    return METHODS[config.name].apply(model, config)
