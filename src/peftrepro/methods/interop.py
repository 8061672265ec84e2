"""The suite's methods to and from Hugging Face peft, and merged checkpoints.

Export (`peftrepro export RUN_DIR --format peft|merged OUT`, orchestrated by `peftrepro.runs.export`):
- LoRA -> a peft LoRA adapter (adapter_config.json + adapter_model.safetensors, written by peft
  itself), which `PeftModel.from_pretrained(base, OUT)` loads with the suite's logits. A module
  holding one paper matrix maps one to one (r, lora_alpha = α, scaling α/r). A fused module holding
  several adapted matrices (GPT-2's c_attn with W_q and W_v; GPT-NeoX's per-head query_key_value; ...)
  becomes ONE peft LoRA of rank Σr on that module: A stacks the matrices' A's, B places each
  matrix's B on the rows it owns and zeros elsewhere (W_k's rows), so ΔW is exactly the suite's.
  With equal ranks the scaling stays lora_alpha / r (lora_alpha = α·Σr/r); with unequal ranks each
  matrix's α/r is folded into its B and lora_alpha = Σr (scaling 1). Ranks and alphas per module go
  in peft's rank_pattern / alpha_pattern.
  QLoRA (LoRA with `quantize`) exports the same way, for its base stored in 4 bits (peft wraps the
  4-bit layers as it does under bitsandbytes loading).
- PreEmbed without infix tokens, and prompt tuning -> peft prompt tuning (the same virtual
  embeddings before the input). With infix tokens PreEmbed has no peft equivalent.
- Merged (`merged_model`): the base model with the update folded into its weights, for LoRA, FT,
  FT-Top-k, BitFit and the pruning methods (each pruned weight with its mask applied: the zeros are
  the model's), which then loads with `AutoModelForCausalLM.from_pretrained` alone. QLoRA has no
  merged form: a 4-bit W0 cannot hold W0 + s·BA.
Adapter-H/-L and PreLayer have neither form: their checkpoint is the suite's own.

Import: method `peft_adapter` (`method=peft_adapter method.path=DIR`) loads a peft LoRA adapter into
the suite's LoRA modules and trains nothing, so a run evaluates it on a task and writes a record like
any other. A matrix of a fused module gets the rows of peft's B it owns and a copy of its A (peft
shares one A over the module); blocks the adapter leaves out get B = 0 (no update); each module's
peft scaling (lora_alpha / r, or / √r with rslora) is kept. What the suite's LoRA cannot hold (DoRA,
trained biases, modules_to_save, matrices outside the blocks or not among the paper's) is refused,
and so is an adapter whose shapes, or whose base model name, do not fit the model.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftrepro.errors import ConfigError
from peftrepro.methods.base import AppliedMethod, MethodConfig, freeze_all
from peftrepro.methods.lora import LoRAConfig, LoRAModule, apply_lora
from peftrepro.methods.prefix import PrefixEmbedConfig, PromptTuningConfig, VirtualTokenEmbedding
from peftrepro.methods.pruning import PruningConfig, remove_masks
from peftrepro.methods.selective import BitFitConfig, FTTopConfig, FullFTConfig
from peftrepro.methods.targets import backbone, blocks, layout, module_shape
from peftrepro.paths import resolve_path

FORMATS = ("peft", "merged")
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
MERGEABLE = (LoRAConfig, FullFTConfig, FTTopConfig, BitFitConfig, PruningConfig)
_PEFT_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError("exchanging adapters with peft needs the peft package: "
                          "pip install 'peft-repro[interop]'") from None
    return peft


# ----------------------------------------------------------------------------- export


def check_exportable(config: MethodConfig, format: str) -> None:
    """ConfigError, before anything is loaded or written, if `format` cannot express `config`'s method."""
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r} is not one of {list(FORMATS)}")
    if format == "merged" and not isinstance(config, MERGEABLE):
        raise ConfigError(f"method {config.name!r} adds computation that does not fold into the weights, so it has no "
                          f"merged checkpoint (--format merged: lora, ft, ft_top, bitfit, the pruning methods); "
                          f"{_peft_alternative(config)}")
    if format == "merged" and isinstance(config, LoRAConfig) and config.quantize is not None:
        raise ConfigError("lora with method.quantize (QLoRA) keeps W0 in 4 bits, which cannot hold W0 + s·BA, so it "
                          "has no merged checkpoint; --format peft expresses it (a peft LoRA for the 4-bit base)")
    if format == "peft" and not _peft_expresses(config):
        merged = ("use --format merged: a checkpoint with the update folded into the weights" if isinstance(
            config, MERGEABLE) else "nor can --format merged (its computation does not fold into the weights): the "
            "suite's own checkpoint (adapter.safetensors + method.json) is its only form")
        raise ConfigError(f"peft cannot express method {config.name!r}{_why_not_peft(config)}; {merged}")


def _peft_expresses(config: MethodConfig) -> bool:
    return isinstance(config, (LoRAConfig, PromptTuningConfig)) or (
        isinstance(config, PrefixEmbedConfig) and config.infix_length == 0)


def _why_not_peft(config: MethodConfig) -> str:
    if isinstance(config, PrefixEmbedConfig):
        return f" with infix tokens (infix_length={config.infix_length}; peft's prompt tuning has a prefix only)"
    return ""


def _peft_alternative(config: MethodConfig) -> str:
    if _peft_expresses(config):
        return "--format peft expresses it"
    return "the suite's own checkpoint (adapter.safetensors + method.json) is its only form"


def export_peft(applied: AppliedMethod, directory: Path, base_model: str | None) -> None:
    """Write `applied` (LoRA, or PreEmbed without infix and prompt tuning) as a peft adapter; peft writes the files.
    `base_model`: the hub id or directory the adapter's base loads from (None: none can).

    The model is changed in place: the suite's modules are taken out and peft's put in."""
    check_exportable(applied.config, "peft")
    peft = _peft()
    if base_model:  # peft names the base after the model it wraps
        applied.model.name_or_path = base_model
    if isinstance(applied.config, LoRAConfig):
        peft_model = _as_peft_lora(peft, applied, base_model)
    else:
        peft_model = _as_peft_prompt_tuning(peft, applied, base_model)
    peft_model.save_pretrained(str(directory))


@dataclass(frozen=True)
class _PeftLoRA:
    """One module's LoRA in peft's form: ΔW = scaling · B·A, scaling = alpha / rank."""

    A: torch.Tensor  # rank × d_in
    B: torch.Tensor  # d_out × rank
    alpha: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]


def _peft_form(wrapper: LoRAModule, alpha: float) -> _PeftLoRA:
    """ΔW = Σ (α/r_i)·B_i·A_i over the module's matrices, as one LoRA of rank Σr_i."""
    A, B = wrapper._stacked_A().detach(), wrapper._padded_B().detach()
    ranks = {s.rank for s in wrapper.slices}
    if len(ranks) == 1:  # one scaling α/r for every column: peft's lora_alpha / Σr with lora_alpha = α·Σr/r
        return _PeftLoRA(A, B, alpha * A.shape[0] / ranks.pop())
    return _PeftLoRA(A, B * wrapper.scaling, float(A.shape[0]))  # each α/r_i folded into its B; scaling 1


def _as_peft_lora(peft: Any, applied: AppliedMethod, base_model: str | None) -> nn.Module:
    model = applied.model
    prefix = _blocks_name(model)
    wrappers = {name: module for name, module in model.named_modules() if isinstance(module, LoRAModule)}
    forms = {name: _peft_form(wrapper, applied.config.alpha) for name, wrapper in wrappers.items()}
    for name, wrapper in wrappers.items():  # the plain base model, for peft to wrap
        model.set_submodule(name, wrapper.base)
    per_path = {_in_block(name, prefix)[1]: form for name, form in forms.items()}  # equal in every block
    first = next(iter(per_path.values()))
    config = peft.LoraConfig(
        r=first.rank, lora_alpha=first.alpha, target_modules=sorted(per_path), lora_dropout=applied.config.dropout,
        rank_pattern={path: form.rank for path, form in per_path.items()},
        alpha_pattern={path: form.alpha for path, form in per_path.items()},
        fan_in_fan_out=any(isinstance(w.base, Conv1D) for w in wrappers.values()), bias="none",
        task_type="CAUSAL_LM", base_model_name_or_path=base_model)
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, form in forms.items():
            module = peft_model.base_model.model.get_submodule(name)
            module.lora_A["default"].weight.copy_(form.A)
            module.lora_B["default"].weight.copy_(form.B)
    return peft_model


def _as_peft_prompt_tuning(peft: Any, applied: AppliedMethod, base_model: str | None) -> nn.Module:
    model = applied.model
    path = layout(model).embedding
    wrapper = backbone(model).get_submodule(path)
    assert isinstance(wrapper, VirtualTokenEmbedding)
    backbone(model).set_submodule(path, wrapper.base)
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=wrapper.virtual.shape[0],
                                     token_dim=wrapper.virtual.shape[1], base_model_name_or_path=base_model)
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(wrapper.virtual)
    return peft_model


def merged_model(applied: AppliedMethod) -> nn.Module:
    """The base model with the method's update in its own weights and no module of the suite left."""
    check_exportable(applied.config, "merged")
    if isinstance(applied.config, LoRAConfig):
        return applied.merge_and_unload()
    if isinstance(applied.config, PruningConfig):
        remove_masks(applied.model)
    return applied.model  # FT, FT-Top-k, BitFit and pruning trained the model's own parameters


# ----------------------------------------------------------------------------- import: method `peft_adapter`


@dataclass
class PeftAdapterConfig(MethodConfig):
    """A LoRA adapter trained with peft, evaluated as it is (nothing trains)."""

    name: ClassVar[str] = "peft_adapter"
    trains: ClassVar[bool] = False
    path: str | None = None  # a peft adapter directory (adapter_config.json + adapter_model.safetensors)
    # refuse an adapter whose base_model_name_or_path names another model than the one loaded
    # (compared by the last path component, case aside); false: the same model under another name
    check_base: bool = True

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("method peft_adapter needs method.path=<a peft adapter directory> "
                              f"({PEFT_CONFIG_FILE} + {PEFT_WEIGHTS_FILE})")
        for file in (PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE):
            if not (self.directory / file).is_file():
                raise ConfigError(f"method.path={self.path}: {self.directory / file} does not exist; a peft adapter "
                                  f"directory holds {PEFT_CONFIG_FILE} and {PEFT_WEIGHTS_FILE} (peft's save_pretrained)")

    @property
    def directory(self) -> Path:
        return resolve_path(str(self.path))


def adapter_digest(directory: Path) -> str:
    """sha256 over the adapter's config and weights files (the record's word on what was evaluated)."""
    digest = hashlib.sha256()
    for file in (PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE):
        digest.update((directory / file).read_bytes())
    return digest.hexdigest()


def apply_peft_adapter(model: nn.Module, config: PeftAdapterConfig) -> AppliedMethod:
    from safetensors.torch import load_file

    directory = config.directory
    peft_config = _read_peft_config(directory)
    _require_expressible(peft_config, directory)
    if config.check_base:
        _require_same_base(peft_config.base_model_name_or_path, model, directory)
    per_module = _peft_modules(load_file(str(directory / PEFT_WEIGHTS_FILE)), directory)
    prefix = _blocks_name(model)
    placed = {name: _place(name, prefix, tensors, model, directory) for name, tensors in per_module.items()}
    ranks = _rank_per_weight(placed, model, directory)
    scalings = {name: _peft_scaling(peft_config, name, tensors["A"].shape[0]) for name, tensors in per_module.items()}
    # one α for every matrix: the adapter's own when it has one scaling and one rank (the factor below
    # is then exactly 1), else each module's scaling is folded into its B
    first = next(iter(per_module))
    alpha = scalings[first] * per_module[first]["A"].shape[0]
    applied = apply_lora(model, LoRAConfig(ranks=ranks, alpha=alpha, dropout=0.0))
    freeze_all(model)  # evaluated as it is
    layers = blocks(model)
    with torch.no_grad():
        for wrapper in applied.mergeable:  # blocks the adapter leaves out: no update
            for parameter in wrapper.lora_B.values():
                parameter.zero_()
        for name, (index, path, tensors) in placed.items():
            wrapper = layers[index].get_submodule(path)
            for s in wrapper.slices:  # peft's one A for each matrix of the module, and the rows of B it owns
                wrapper.lora_A[s.weight].copy_(tensors["A"])
                wrapper.lora_B[s.weight].copy_(tensors["B"][s.rows.index()] * (scalings[name] * s.rank / alpha))
    return AppliedMethod(model=model, config=config, mergeable=applied.mergeable, provenance={
        "adapter": str(directory), "sha256": adapter_digest(directory), "peft_type": _peft_type(peft_config),
        "base_model_name_or_path": peft_config.base_model_name_or_path, "ranks": ranks})


def _read_peft_config(directory: Path) -> Any:
    peft = _peft()
    try:
        return peft.PeftConfig.from_pretrained(str(directory))
    except Exception as error:  # peft's own reading decides what a valid adapter config is
        raise ConfigError(f"{directory / PEFT_CONFIG_FILE} is not an adapter config this peft reads: "
                          f"{type(error).__name__}: {error}") from error


def _peft_type(peft_config: Any) -> str:
    peft_type = getattr(peft_config, "peft_type", None)
    return str(getattr(peft_type, "value", peft_type))


def _require_expressible(peft_config: Any, directory: Path) -> None:
    peft_type = _peft_type(peft_config)
    if peft_type != "LORA":
        raise ConfigError(f"method peft_adapter loads LoRA adapters; {directory} holds a {peft_type} adapter")
    refusals = {
        "use_dora": "DoRA (a learned magnitude per output)",
        "modules_to_save": "whole modules trained beside the LoRA (modules_to_save)",
        "lora_bias": "LoRA biases (lora_bias)",
        "target_parameters": "LoRA on parameters rather than modules (target_parameters)",
        "layer_replication": "replicated layers (layer_replication)",
        "trainable_token_indices": "trained token embeddings (trainable_token_indices)",
    }
    found = [what for option, what in refusals.items() if getattr(peft_config, option, None)]
    if getattr(peft_config, "bias", "none") != "none":
        found.append(f"trained biases (bias={peft_config.bias!r})")
    if found:
        raise ConfigError(f"{directory}: the suite's LoRA cannot hold {', '.join(found)}; evaluate this adapter with "
                          f"peft itself")


def _require_same_base(base_model: str | None, model: nn.Module, directory: Path) -> None:
    ours = str(getattr(model, "name_or_path", "") or "")
    if not base_model or not ours:
        return
    if Path(base_model.rstrip("/")).name.lower() != Path(ours.rstrip("/")).name.lower():
        raise ConfigError(f"{directory} is an adapter for base model {base_model!r}, but the run loaded {ours!r}; "
                          "load that model (model=hub model.name_or_path=...), or set method.check_base=false "
                          "if it is the same model under another name")


def _peft_modules(tensors: dict[str, torch.Tensor], directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {"A": ..., "B": ...}} from peft's keys (base_model.model.<module>.lora_A.weight)."""
    modules: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in tensors.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise ConfigError(f"{directory / PEFT_WEIGHTS_FILE}: tensor {key!r} is not a LoRA A or B of a module "
                              "(the suite's LoRA holds only those)")
        modules[match["module"]][match["part"]] = tensor.float()
    incomplete = sorted(name for name, parts in modules.items() if set(parts) != {"A", "B"})
    if incomplete:
        raise ConfigError(f"{directory / PEFT_WEIGHTS_FILE}: {incomplete[:3]} lack lora_A or lora_B")
    return dict(modules)


def _place(name: str, prefix: str, tensors: dict[str, torch.Tensor], model: nn.Module,
           directory: Path) -> tuple[int, str, dict[str, torch.Tensor]]:
    """(block index, path in the block, tensors), with the shapes checked against the model's module."""
    index, path = _in_block(name, prefix)
    if index is None or index >= len(blocks(model)):
        raise ConfigError(f"{directory} adapts `{name}`, which is not in this model's blocks `{prefix}.<i>`: "
                          "an adapter for another model, or for a module outside the Transformer blocks")
    if not _owned(model, path):
        where = ", ".join(f"{weight}: {target.module}" for weight, target in layout(model).weights.items())
        raise ConfigError(f"{directory} adapts `{path}`, which holds none of the paper's matrices in a "
                          f"{layout(model).family} model ({where})")
    d_in, d_out = module_shape(blocks(model)[index].get_submodule(path))
    A, B = tensors["A"], tensors["B"]
    if A.shape[1] != d_in or B.shape[0] != d_out or A.shape[0] != B.shape[1]:
        raise ConfigError(f"{directory} does not fit this model: `{name}` has lora_A {tuple(A.shape)} and lora_B "
                          f"{tuple(B.shape)}, but the model's module there maps {d_in} -> {d_out} features; "
                          "was the adapter trained on another base model?")
    return index, path, tensors


def _owned(model: nn.Module, path: str) -> list[str]:
    """The paper matrices the module at `path` (in a block) holds: one, or several if fused."""
    return [weight for weight, target in layout(model).weights.items() if target.module == path]


def _rank_per_weight(placed: dict[str, tuple[int, str, dict[str, torch.Tensor]]], model: nn.Module,
                     directory: Path) -> dict[str, int]:
    """The rank of each paper matrix the adapter adapts (every matrix of a fused module: the module's)."""
    ranks: dict[str, set[int]] = defaultdict(set)
    for _, path, tensors in placed.values():
        ranks[path].add(int(tensors["A"].shape[0]))
    varying = {path: sorted(r) for path, r in ranks.items() if len(r) > 1}
    if varying:
        raise ConfigError(f"{directory}: the rank of {varying} differs between blocks; the suite's LoRA has one "
                          "rank per matrix in every block")
    return {weight: next(iter(r)) for path, r in ranks.items() for weight in _owned(model, path)}


def _peft_scaling(config: Any, module: str, rank: int) -> float:
    """peft's scaling of `module`: its alpha_pattern entry (peft's own matching) or lora_alpha, over r or √r."""
    from peft.utils.other import get_pattern_key

    alphas = getattr(config, "alpha_pattern", None) or {}
    alpha = alphas.get(get_pattern_key(list(alphas), module), config.lora_alpha)
    return alpha / math.sqrt(rank) if config.use_rslora else alpha / rank


def _blocks_name(model: nn.Module) -> str:
    """The blocks' full name in the model (e.g. `model.layers`), as peft's keys spell module names."""
    layers = blocks(model)
    return next(name for name, module in model.named_modules() if module is layers)


def _in_block(name: str, prefix: str) -> tuple[int | None, str]:
    match = re.fullmatch(rf"{re.escape(prefix)}\.(\d+)\.(.+)", name)
    return (int(match[1]), match[2]) if match else (None, name)

