"""Adapter checkpoints: only the trainable parameters (safetensors) plus the method config (json).

`load_adapter` re-applies the method from method.json to a base model and then requires the
file's tensors to match the model's trainable parameters exactly: same names, same shapes, no
missing and no unexpected key (cf. microsoft/LoRA #138, where strict=False hid a missing backbone).
Values are copied bit for bit (same dtype as saved).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from peftrepro.errors import ConfigError
from peftrepro.methods.base import AppliedMethod, MethodConfig

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "method.json"
FORMAT_VERSION = 1


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, config: MethodConfig, directory: str | Path) -> int:
    """Write adapter.safetensors + method.json into `directory`; return the safetensors size in bytes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous().cpu() for name, p in trainable_state(model).items()}
    if not tensors:
        raise ConfigError(f"save_adapter: the model has no trainable parameters; apply method {config.name!r} first")
    save_file(tensors, str(directory / WEIGHTS_FILE))
    meta = {"format_version": FORMAT_VERSION, "method": config.name, "options": config.options(),
            "shapes": {name: list(t.shape) for name, t in tensors.items()}}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return (directory / WEIGHTS_FILE).stat().st_size


def load_adapter(model: nn.Module, directory: str | Path) -> AppliedMethod:
    """Apply the saved method to base `model` (in place) and load its trained parameters."""
    from peftrepro.methods.registry import (  # registry imports us
        apply_method,
        make_method_config,
    )

    directory = Path(directory)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / file).is_file():
            raise ConfigError(f"load_adapter: {directory / file} does not exist; "
                              f"a checkpoint directory holds {CONFIG_FILE} and {WEIGHTS_FILE} (save_adapter)")
    meta = json.loads((directory / CONFIG_FILE).read_text())
    applied = apply_method(model, make_method_config(meta["method"], meta["options"]))
    saved = load_file(str(directory / WEIGHTS_FILE))
    _check_matches(trainable_state(model), saved, directory)
    with torch.no_grad():
        for name, parameter in trainable_state(model).items():
            parameter.copy_(saved[name])
    return applied


def _check_matches(expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], where: Path) -> None:
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"load_adapter: {where / WEIGHTS_FILE} does not fit this model: "
                          f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
                          f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)}); "
                          "was it saved from another architecture or size?")
    for name, parameter in expected.items():
        if tuple(saved[name].shape) != tuple(parameter.shape):
            raise ConfigError(f"load_adapter: {name} has shape {tuple(saved[name].shape)} in {where / WEIGHTS_FILE} "
                              f"but {tuple(parameter.shape)} in the model; the base model differs from the one saved")
        if saved[name].dtype != parameter.dtype:
            raise ConfigError(f"load_adapter: {name} is {saved[name].dtype} in the file but {parameter.dtype} "
                              "in the model; load the base model in the dtype it was trained in")
