"""Adapter checkpoints: only the trainable parameters (safetensors) plus the method config (json);
for a model pruned through torch.nn.utils.prune also its masks (stored as bool: a byte per weight),
since a pruned model is its weights and its masks.

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
from peftrepro.methods.base import HALF, AppliedMethod, MethodConfig

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "method.json"
FORMAT_VERSION = 1


MASK_SUFFIX = "_mask"  # torch.nn.utils.prune keeps a pruned `weight`'s mask in the buffer `weight_mask`


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def pruning_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks of weights pruned through torch.nn.utils.prune (beside each, its `<name>_orig`)."""
    return {f"{prefix}.{name}" if prefix else name: buffer for prefix, module in model.named_modules()
            for name, buffer in module.named_buffers(recurse=False)
            if name.endswith(MASK_SUFFIX) and hasattr(module, name[:-len(MASK_SUFFIX)] + "_orig")}


def checkpoint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> the live tensor a checkpoint saves and restores."""
    return {**trainable_state(model), **pruning_masks(model)}


def _as_saved(name: str, tensor: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    return (tensor.bool() if name in masks else tensor.detach()).contiguous().cpu()


def save_adapter(model: nn.Module, config: MethodConfig, directory: str | Path) -> int:
    """Write adapter.safetensors + method.json into `directory`; return the safetensors size in bytes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    masks = pruning_masks(model)
    tensors = {name: _as_saved(name, t, masks) for name, t in checkpoint_state(model).items()}
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
    masks, live = pruning_masks(model), checkpoint_state(model)
    expected = {name: (tuple(t.shape), torch.bool if name in masks else t.dtype) for name, t in live.items()}
    _check_matches(expected, saved, directory)
    with torch.no_grad():
        for name, tensor in live.items():
            tensor.copy_(saved[name])  # a bool mask back into its float buffer
    return applied


def _check_matches(expected: dict[str, tuple[tuple[int, ...], torch.dtype]], saved: dict[str, torch.Tensor],
                   where: Path) -> None:
    """`expected`: name -> (shape, dtype) as the file must hold it."""
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"load_adapter: {where / WEIGHTS_FILE} does not fit this model: "
                          f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
                          f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)}); "
                          "was it saved from another architecture or size?")
    for name, (shape, dtype) in expected.items():
        if tuple(saved[name].shape) != shape:
            raise ConfigError(f"load_adapter: {name} has shape {tuple(saved[name].shape)} in {where / WEIGHTS_FILE} "
                              f"but {shape} in the model; the base model differs from the one saved")
        if saved[name].dtype != dtype:
            raise ConfigError(f"load_adapter: {name} is {saved[name].dtype} in the file but {dtype} "
                              f"in the model; {_dtype_hint(saved[name].dtype, dtype)}")


def _dtype_hint(saved: torch.dtype, expected: torch.dtype) -> str:
    hint = "load the base model in the dtype it was trained in (`model.dtype`)"
    if saved in HALF and expected == torch.float32:  # an added parameter is fp32 over any base (trainable_dtype)
        hint += (f"; if it was, the file comes from a version that kept a method's added parameters in the "
                 f"base's {saved} rather than fp32, and has to be trained again")
    return hint
