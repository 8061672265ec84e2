"""LoRA (Hu et al. 2021, §4.1): h = W0·x + (α/r)·B·A·x with W0 frozen, B zero-initialised.

Each adapted weight matrix gets its own A (r×d_in) and B (d_out×r) and its own rank (Table 15
uses r_q = r_v = 8 or r_q = r_k = r_v = r_o = 2). In a fused projection (GPT-2's `c_attn`, a
Conv1D stored transposed; GPT-NeoX's per-head `query_key_value`; ...) a matrix owns the output
rows `methods.targets` assigns it, so adapting W_q and W_v touches exactly the query and value
rows of every head (peft #706 shares one A over the whole fused module instead). All adapted
matrices of one module are computed in ONE pair of skinny products: the A's are stacked
(Σr × d_in) and the B's placed on their rows of a zero (d_out × Σr) matrix, so the fused q/v
update costs two matmuls, not one per projection. The base path is the untouched module.

QLoRA (Dettmers et al. 2023) is this method with `quantize` set: the blocks' linear layers are first
stored in 4 bits (methods/quantize.py), then wrapped as usual; such a base cannot be merged. The record
names the blocks' matrices that stay in full precision (`quantized.not_quantized`: a mixture of experts' MLPs).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftrepro.errors import ConfigError
from peftrepro.methods.base import (
    AppliedMethod,
    MethodConfig,
    freeze_all,
    require_positive,
    trainable_dtype,
)
from peftrepro.methods.quantize import QuantizeConfig, is_4bit, quantize_block_linears, require_bitsandbytes
from peftrepro.methods.targets import (
    PAPER_WEIGHTS,
    Rows,
    blocks,
    module_shape,
    weight_target,
)

LORA_INITS = ("kaiming_uniform", "gaussian")


@dataclass
class LoRAConfig(MethodConfig):
    name: ClassVar[str] = "lora"
    weights: list[str] = field(default_factory=lambda: ["W_q", "W_v"])  # paper names, see targets.py
    r: int = 4  # rank of every weight in `weights`
    ranks: dict[str, int] | None = None  # explicit {weight: rank}; overrides weights/r (Table 5/15)
    alpha: float = 32  # update scaled by alpha / r (per weight, with that weight's own r)
    dropout: float = 0.1  # dropout on the LoRA branch's input only (loralib `lora_dropout`)
    # A's init. The paper (§4.1) says "random Gaussian"; loralib, the code the authors ran, uses
    # kaiming_uniform(a=√5) (nn.Linear's default) and says so in a comment. Default follows the
    # code; "gaussian" draws N(0, 1/r²) like peft's init_lora_weights="gaussian".
    init: str = "kaiming_uniform"
    # QLoRA: store the blocks' linear layers in 4 bits first, e.g. {quant_type: nf4, double_quant: true}
    # (methods/quantize.QuantizeConfig; null: the base as loaded)
    quantize: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.quantize is not None:  # every default spelled out, so equal storage reads equal
            self.quantize = QuantizeConfig.from_options(self.quantize).options()
        super().__post_init__()

    def validate(self) -> None:
        for weight, rank in self.rank_per_weight().items():
            if weight not in PAPER_WEIGHTS:
                raise ConfigError(f"lora: unknown weight name {weight!r}; valid names: {list(PAPER_WEIGHTS)}")
            require_positive(self, f"rank of {weight}" if self.ranks else "r", rank)
        if not self.rank_per_weight():
            raise ConfigError("lora: no weight to adapt; set weights: [W_q, W_v] or ranks: {W_q: 4}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora: dropout must be in [0, 1), got {self.dropout!r}")
        if not self.alpha > 0:
            raise ConfigError(f"lora: alpha must be > 0, got {self.alpha!r}")
        if self.init not in LORA_INITS:
            raise ConfigError(f"lora: init must be one of {list(LORA_INITS)}, got {self.init!r}")

    def check_run(self, run_config: Mapping[str, Any]) -> None:
        if self.quantize is None:
            return
        if run_config.get("merge_for_eval", True):  # a config error first: it is one wherever the run goes
            raise ConfigError("lora with method.quantize keeps W0 in 4 bits, which cannot hold W0 + s·BA, so the "
                              "update cannot be merged for evaluation: set merge_for_eval=false (the LoRA branch "
                              "then runs beside the 4-bit base, as in QLoRA)")
        require_bitsandbytes()

    def rank_per_weight(self) -> dict[str, int]:
        if self.ranks:
            return dict(self.ranks)
        return {weight: self.r for weight in self.weights}

    def canonical(self) -> dict[str, Any]:
        # `ranks: {W_q: 8}` and `weights: [W_q], r: 8` adapt the same matrix at the same rank
        options = {key: value for key, value in self.options().items() if key not in ("weights", "r", "ranks")}
        return {"name": self.name, **options, "ranks": dict(sorted(self.rank_per_weight().items()))}


@dataclass(frozen=True)
class LoRASlice:
    """One adapted weight matrix inside a (possibly fused) module."""

    weight: str  # paper name, also the key of lora_A / lora_B
    rows: Rows  # its output features in the module (in a fused module, the rows `targets` assigns it)
    rank: int


class LoRAModule(nn.Module):
    """A frozen nn.Linear or Conv1D plus low-rank updates on some of its output rows."""

    def __init__(self, base: nn.Module, slices: list[LoRASlice], alpha: float, dropout: float, init: str):
        super().__init__()
        self.base = base
        self.fan_in_fan_out = isinstance(base, Conv1D)  # Conv1D stores W as d_in×d_out
        # a 4-bit base (QLoRA) packs its weight in bytes: LoRA's factors take the dtype it was loaded in
        weight = base.weight if not is_4bit(base) else torch.empty(0, dtype=base.weight.quant_state.dtype,
                                                                   device=base.weight.device)
        self.in_features, self.out_features = module_shape(base)
        self.slices = slices
        dtype = trainable_dtype(weight.dtype)
        self.lora_A = nn.ParameterDict(
            {s.weight: nn.Parameter(weight.new_empty(s.rank, self.in_features, dtype=dtype)) for s in slices})
        self.lora_B = nn.ParameterDict(
            {s.weight: nn.Parameter(weight.new_zeros(len(s.rows), s.rank, dtype=dtype)) for s in slices})
        for s in slices:
            _init_A(self.lora_A[s.weight], init, s.rank)
        scaling = torch.cat([torch.full((s.rank,), alpha / s.rank) for s in slices])
        self.register_buffer("scaling", scaling.to(device=weight.device, dtype=dtype), persistent=False)
        # the module's rows that the stacked B's rows land on, in slice order (buffers follow .to(device))
        rows = torch.cat([s.rows.index() for s in slices])
        self.register_buffer("rows", rows.to(weight.device), persistent=False)
        self.rows_in_order = bool(torch.equal(rows, torch.arange(self.out_features)))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.unmerged_rows: torch.Tensor | None = None  # the frozen rows while merged, restored by unmerge

    @property
    def merged(self) -> bool:
        return self.unmerged_rows is not None

    def _stacked_A(self) -> torch.Tensor:
        return torch.cat([self.lora_A[s.weight] for s in self.slices]) if len(self.slices) > 1 \
            else self.lora_A[self.slices[0].weight]

    def _padded_B(self) -> torch.Tensor:
        """(d_out × Σr): each slice's B on its rows and rank columns, zeros elsewhere (e.g. W_k's rows)."""
        stacked = torch.block_diag(*(self.lora_B[s.weight] for s in self.slices)) if len(self.slices) > 1 \
            else self.lora_B[self.slices[0].weight]
        if self.rows_in_order:
            return stacked
        return stacked.new_zeros(self.out_features, stacked.shape[1]).index_copy(0, self.rows, stacked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        A = self._stacked_A()  # in the factors' dtype (fp32 over a half-precision base), back in out's
        low_rank = F.linear(self.dropout(x).to(A.dtype), A) * self.scaling
        return out + F.linear(low_rank, self._padded_B()).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s·B·A in the base module's own layout (transposed for Conv1D)."""
        delta = (self._padded_B() * self.scaling) @ self._stacked_A()
        return delta.T if self.fan_in_fan_out else delta

    def _rows_view(self) -> torch.Tensor:
        """The base weight as d_out × d_in (a view: writing to it writes the weight)."""
        return self.base.weight.T if self.fan_in_fan_out else self.base.weight

    @torch.no_grad()
    def merge(self) -> None:
        """W[rows] += ΔW[rows], summed in fp32 and rounded once to W's dtype; the frozen rows are kept,
        so that `unmerge` restores them bit for bit (W + Δ - Δ is not W in floating point)."""
        if is_4bit(self.base):
            raise ConfigError("merge(): this LoRA sits on a 4-bit base (QLoRA), which cannot hold W0 + s·BA without "
                              "re-quantising W0 and changing the model; keep the update unmerged")
        if self.merged:
            return
        weight = self._rows_view()
        delta = (self._padded_B() * self.scaling).float() @ self._stacked_A().float()
        frozen = weight[self.rows]
        weight[self.rows] = (frozen.float() + delta[self.rows]).to(weight.dtype)
        self.unmerged_rows = frozen

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._rows_view()[self.rows] = self.unmerged_rows
            self.unmerged_rows = None

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{s.weight}: r={s.rank} rows {s.rows.describe()}" for s in self.slices)
        return f"{ranks}, merged={self.merged}"


def _init_A(A: nn.Parameter, init: str, rank: int) -> None:
    if init == "kaiming_uniform":
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
    else:
        nn.init.normal_(A, std=1.0 / rank)


def apply_lora(model: nn.Module, config: LoRAConfig) -> AppliedMethod:
    # in the paper's order, not the config's: the factors draw their initial values in this order, and
    # `weights: [W_v, W_q]` is the same run as `[W_q, W_v]` (canonical)
    ranks = dict(sorted(config.rank_per_weight().items(), key=lambda item: PAPER_WEIGHTS.index(item[0])))
    targets = {weight: weight_target(model, weight) for weight in ranks}  # ConfigError if one is not mapped
    by_module: Mapping[str, list[str]] = defaultdict(list)
    for weight, target in targets.items():
        by_module[target.module].append(weight)
    freeze_all(model)
    quantized = None
    if config.quantize is not None:
        quantized = quantize_block_linears(model, QuantizeConfig.from_options(config.quantize))
    wrappers = []
    for index, block in enumerate(blocks(model)):
        for module_path, weights in by_module.items():
            base = block.get_submodule(module_path)
            if not isinstance(base, (nn.Linear, Conv1D)):
                raise ConfigError(f"lora: block {index} {module_path} is a {type(base).__name__}; "
                                  "LoRA wraps nn.Linear or Conv1D only")
            out_features = module_shape(base)[1]
            slices = sorted((LoRASlice(w, targets[w].rows or Rows.all(out_features), ranks[w]) for w in weights),
                            key=lambda s: s.rows.first)
            wrapper = LoRAModule(base, slices, config.alpha, config.dropout, config.init)
            block.set_submodule(module_path, wrapper)
            wrappers.append(wrapper)
    return AppliedMethod(model=model, config=config, mergeable=wrappers,
                         facts=lambda: {"quantized": quantized} if quantized else {})
