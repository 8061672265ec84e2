"""LoRA's trained factors A and B of chosen layers, kept small enough to commit (paper §7).

The paper's analyses of the low-rank updates (§7.2 Figures 3 and 4, §7.3 Table 7) need the learned
A (r×d_in) and B (d_out×r) of W_q and W_v at a few layers, not the whole adapter. `export_factors`
copies them out of a run's saved adapter (`adapter.safetensors` + `method.json`, the best epoch's
weights, i.e. the model that was evaluated) into one `lora_factors.safetensors`: fp16 (about three
significant digits, far finer than the analyses resolve), keyed `layers.<i>.<W_x>.lora_A|lora_B`,
with the LoRA scale α and each weight's rank in the file's metadata. `load_factors` reads it back.

Layers are named by index (negative counts from the end) or `first`, `middle`, `last`; `middle` is
block (L-1)//2, the paper's 48th of 96 (block 47 counted from 0) and SmolLM2's 15th of 30.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftrepro.errors import ConfigError, DataError
from peftrepro.methods.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from peftrepro.methods.targets import BY_MODEL_TYPE, PAPER_WEIGHTS, blocks, unwrapped, weight_target

FACTORS_FILE = "lora_factors.safetensors"
FORMAT = "peftrepro-lora-factors"
FORMAT_VERSION = 1
LAYER_NAMES = ("first", "middle", "last")


def resolve_layers(spec: Sequence[str | int], n_layers: int) -> list[int]:
    """Block indices (sorted, distinct) for layer names or indices; ConfigError on one that does not exist."""
    named = {"first": 0, "middle": (n_layers - 1) // 2, "last": n_layers - 1}
    chosen = set()
    for layer in spec:
        if isinstance(layer, str) and layer in named:
            chosen.add(named[layer])
        elif isinstance(layer, int) and not isinstance(layer, bool) and -n_layers <= layer < n_layers:
            chosen.add(layer % n_layers)
        else:
            raise ConfigError(f"lora_factors.layers: {layer!r} is not a layer of a {n_layers}-layer model; "
                              f"use {list(LAYER_NAMES)} or an index in [{-n_layers}, {n_layers - 1}]")
    if not chosen:
        raise ConfigError("lora_factors.layers is empty; name at least one layer, e.g. [middle, last]")
    return sorted(chosen)


def check_option(option: Mapping[str, Any] | None) -> None:
    """Validate the run option `lora_factors: {layers: [...], weights: [...], ranks: [...] | null}` before
    anything is loaded."""
    if option is None:
        return
    if not isinstance(option, Mapping) or not {"layers", "weights"} <= set(option) <= {"layers", "weights", "ranks"}:
        raise ConfigError(f"lora_factors={option!r} must be null or "
                          "{layers: [middle, last], weights: [W_q, W_v], ranks: [4, 8, 64]} (ranks: optional)")
    for layer in option["layers"] or ():
        if not (isinstance(layer, int) or layer in LAYER_NAMES):
            raise ConfigError(f"lora_factors.layers: {layer!r} is neither an index nor one of {list(LAYER_NAMES)}")
    unknown = [w for w in option["weights"] or () if w not in PAPER_WEIGHTS]
    if unknown or not option["weights"]:
        raise ConfigError(f"lora_factors.weights={option['weights']!r}: name paper weights from {list(PAPER_WEIGHTS)}")
    ranks = option.get("ranks")
    if ranks is not None and not (ranks and all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks)):
        raise ConfigError(f"lora_factors.ranks={ranks!r} must be null or a list of ranks >= 1, e.g. [4, 8, 64]")


def keeps_factors(option: Mapping[str, Any] | None, ranks: Mapping[str, int]) -> bool:
    """Whether a LoRA run adapting {weight: rank} keeps its factors: it adapts exactly the option's
    weights, at one of its ranks (any rank when it names none). Runs of other matrices keep none, so a
    table keeps only the factors its analyses read (Table 6: W_q,W_v at r=4, 8 and 64, not W_q alone
    or all four matrices)."""
    if not option or set(ranks) != set(option["weights"]):
        return False
    return option.get("ranks") is None or all(rank in option["ranks"] for rank in ranks.values())


@dataclass(frozen=True)
class Factors:
    """One adapted matrix: ΔW = (α/r)·B·A, in the base weight's (d_out × d_in) orientation."""

    layer: int
    weight: str
    A: torch.Tensor  # r × d_in
    B: torch.Tensor  # d_out × r
    alpha: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self) -> torch.Tensor:
        """The update LoRA adds to W (its merge()), in float64."""
        return (self.alpha / self.rank) * self.B.double() @ self.A.double()


@dataclass(frozen=True)
class FactorsFile:
    """What one lora_factors file holds."""

    path: Path
    factors: Mapping[tuple[int, str], Factors]
    n_layers: int
    blocks: str  # the model's list of blocks (methods.targets layout), whose index names a layer
    # ‖A − A_init‖_F / ‖A_init‖_F per "layer.weight": how far training moved A from its random
    # initialisation (recorded by a run that saved its factors; absent for an export after the fact)
    a_drift: Mapping[str, float]

    @property
    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.factors})

    def get(self, layer: int, weight: str) -> Factors:
        if (layer, weight) not in self.factors:
            raise DataError(f"{self.path} has no factors of {weight} at layer {layer}; it holds "
                            f"{sorted(f'{w}@{i}' for i, w in self.factors)} (lora_factors option of the run)")
        return self.factors[(layer, weight)]


def initial_A(model: nn.Module, layers: Sequence[int], weights: Sequence[str]) -> dict[str, torch.Tensor]:
    """A copy of A, as initialised, of each chosen adapted matrix ("layer.weight" keys): taken right
    after `apply_lora`, it lets the saved factors say how far training moved A (`a_drift`)."""
    found = {}
    for layer in layers:
        for module in blocks(model)[layer].modules():
            lora_A = getattr(module, "lora_A", None)
            if isinstance(lora_A, nn.ParameterDict):
                found.update({f"{layer}.{w}": a.detach().clone() for w, a in lora_A.items() if w in weights})
    return found


def export_factors(adapter_dir: Path, out_path: Path, layers: Sequence[str | int], weights: Sequence[str],
                   blocks_path: str, initial: Mapping[str, torch.Tensor] | None = None) -> Path | None:
    """Write the chosen factors of the LoRA adapter in `adapter_dir` to `out_path` (atomically); the
    adapter's tensors are named after the model's list of blocks, `blocks_path` (`layout(model).blocks`,
    or `blocks_of(record's model)`). None, and nothing written, when the adapter is not LoRA or adapts
    none of `weights`."""
    meta = json.loads((Path(adapter_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    if meta.get("method") != "lora":
        return None
    pairs = _adapter_pairs(load_file(str(Path(adapter_dir) / WEIGHTS_FILE)), blocks_path)
    n_layers = 1 + max(layer for layer, _ in pairs)  # LoRA adapts every block (apply_lora)
    wanted = resolve_layers(layers, n_layers)
    chosen = {(layer, w): pair for (layer, w), pair in pairs.items() if layer in wanted and w in weights}
    if not chosen:
        return None
    tensors = {f"layers.{layer}.{w}.lora_{part}": tensor.to(torch.float16).contiguous()
               for (layer, w), pair in chosen.items() for part, tensor in zip("AB", pair)}
    drift = {f"{layer}.{w}": _relative_change(pair[0], initial[f"{layer}.{w}"])
             for (layer, w), pair in chosen.items() if initial and f"{layer}.{w}" in initial}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "alpha": str(float(meta["options"]["alpha"])),
                "n_layers": str(n_layers), "blocks": blocks_path, "a_drift": json.dumps(drift, sort_keys=True)}
    temporary = out_path.with_name(f".tmp-{out_path.name}")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, out_path)
    return out_path


def load_factors(path: Path) -> FactorsFile:
    """Read a lora_factors file; DataError naming the file when it is not one."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key).float() for key in handle.keys()}
    except (OSError, SafetensorError) as error:
        raise DataError(f"cannot read LoRA factors from {path}: {error}") from error
    if metadata.get("format") != FORMAT or metadata.get("format_version") != str(FORMAT_VERSION):
        raise DataError(f"{path} is not a {FORMAT} file of version {FORMAT_VERSION} (metadata {metadata})")
    alpha = float(metadata["alpha"])
    factors = {}
    for key in tensors:
        if match := re.fullmatch(r"layers\.(\d+)\.(W_\w+)\.lora_A", key):
            layer, weight = int(match.group(1)), match.group(2)
            factors[(layer, weight)] = Factors(layer, weight, tensors[key], tensors[f"layers.{layer}.{weight}.lora_B"],
                                               alpha)
    return FactorsFile(Path(path), factors, int(metadata["n_layers"]), metadata["blocks"],
                       json.loads(metadata.get("a_drift") or "{}"))


def frozen_weight(model: nn.Module, layer: int, weight: str) -> torch.Tensor:
    """The pre-trained matrix of paper weight `weight` in block `layer`, as (d_out × d_in) like ΔW: a
    fused projection's rows of that matrix in LoRA's order (`Rows.index`), from a model without LoRA
    merged into it."""
    target = weight_target(model, weight)
    base = unwrapped(blocks(model)[layer].get_submodule(target.module))
    matrix = base.weight.T if isinstance(base, Conv1D) else base.weight
    return (matrix if target.rows is None else matrix[target.rows.index()]).detach()


def blocks_of(model_record: Mapping[str, Any]) -> str:
    """The list of blocks of the model a run record describes (`model.layout.blocks`; records written
    before the layout was recorded: its family's, by model_type)."""
    recorded = (model_record.get("layout") or {}).get("blocks")
    family = BY_MODEL_TYPE.get(str(model_record.get("model_type")))
    if recorded or family:
        return recorded or family.blocks
    raise ConfigError(f"LoRA factors: the record names no layout of its model and model_type "
                      f"{model_record.get('model_type')!r} is not a family of methods/targets.py")


def _adapter_pairs(state: Mapping[str, torch.Tensor], blocks_path: str) -> dict[tuple[int, str], tuple]:
    """(A, B) per (block, paper weight) from an adapter's tensor names, e.g.
    `model.layers.14.self_attn.q_proj.lora_A.W_q` (Llama) or `transformer.h.3.attn.c_attn.lora_B.W_v` (GPT-2)."""
    name = re.compile(rf"(?:^|.*\.){re.escape(blocks_path)}\.(\d+)\..*\.lora_([AB])\.(W_\w+)")
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if match := name.fullmatch(key):
            parts.setdefault((int(match.group(1)), match.group(3)), {})[match.group(2)] = tensor
    if not parts:
        raise DataError(f"the adapter holds no LoRA factors under the model's blocks `{blocks_path}`")
    return {key: (pair["A"], pair["B"]) for key, pair in parts.items()}


def _relative_change(now: torch.Tensor, before: torch.Tensor) -> float:
    before = before.double().cpu()
    return float(torch.linalg.norm(now.double().cpu() - before) / torch.linalg.norm(before))
