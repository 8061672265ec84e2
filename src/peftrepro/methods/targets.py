"""Where the paper's weight matrices live in each architecture: ONE table, used by every method.

The paper names W_q, W_k, W_v, W_o (attention) and the MLP's W_up and W_down (W_gate in gated
MLPs). Hugging Face families name and pack them differently. Most keep one nn.Linear per matrix;
several fuse q, k and v into one projection, each family with its own order of output rows:

    GPT-2, MPT, Phi-3; Falcon and GPT-BigCode with multi-query   [q | k | v] (k, v as wide as their heads)
    GPT-NeoX, Bloom, Persimmon; Falcon and GPT-BigCode otherwise        per head [q_h | k_h | v_h]
    Falcon's new decoder architecture (grouped queries)                 per KV group [queries of g | k_g | v_g]
    CodeGen                                                             per training shard [q_s | v_s | k_s]

and Phi-3 and GLM fuse their MLP's [gate | up]. A paper matrix is therefore a module path inside a block and,
in a fused module, the exact output rows it owns (`Rows`, an index map): LoRA on W_q then changes the
queries of every head and no key or value, whatever the packing and the q/k/v widths (GQA, MQA).

`layout(model)` resolves the table for one model: by `config.model_type` for the families of
`FAMILIES`; for any other model_type by structure (the list of `num_hidden_layers` blocks, each
paper matrix at a path the table knows, with its shape checked against the hidden size). What
cannot be mapped (q/k/v fused in a family we do not know, whose row order cannot be read off its
shape; the per-expert MLPs of a mixture of experts) is listed with the reason, and a method that
needs it raises ConfigError saying so: never a silent partial match (cf. peft #1959).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftrepro.errors import ConfigError

PAPER_WEIGHTS = ("W_q", "W_k", "W_v", "W_o", "W_up", "W_down", "W_gate")
_READS_HIDDEN = ("W_q", "W_k", "W_v", "W_up", "W_gate")  # input width = the residual stream's
_WRITES_HIDDEN = ("W_o", "W_down")  # output width = the residual stream's


# ----------------------------------------------------------------------------- rows of fused projections


@dataclass(frozen=True)
class Rows:
    """Output rows of one paper matrix inside its module, as sorted runs [start, stop)."""

    runs: tuple[tuple[int, int], ...]

    @classmethod
    def all(cls, n: int) -> Rows:
        return cls(((0, n),))

    def __len__(self) -> int:
        return sum(stop - start for start, stop in self.runs)

    @property
    def first(self) -> int:
        return self.runs[0][0]

    def index(self) -> torch.Tensor:
        return torch.cat([torch.arange(start, stop) for start, stop in self.runs])

    def describe(self, shown: int = 4) -> str:
        text = ", ".join(f"{start}:{stop}" for start, stop in self.runs[:shown])
        return text if len(self.runs) <= shown else f"{text}, … ({len(self.runs)} runs of {len(self) // len(self.runs)})"


@dataclass(frozen=True)
class Packing:
    """A fused projection's output: `groups` repetitions of [part | part | ...], parts in order."""

    groups: int
    widths: Mapping[str, int]  # paper name -> its rows in one group

    def rows(self) -> dict[str, Rows]:
        group_width = sum(self.widths.values())
        rows, offset = {}, 0
        for weight, width in self.widths.items():
            rows[weight] = Rows(tuple((g * group_width + offset, g * group_width + offset + width)
                                      for g in range(self.groups)))
            offset += width
        return rows

    @property
    def out_features(self) -> int:
        return self.groups * sum(self.widths.values())

    def describe(self) -> str:
        parts = " | ".join(f"{weight} {width}" for weight, width in self.widths.items())
        return f"[{parts}]" if self.groups == 1 else f"{self.groups} × [{parts}]"


def attention_heads(config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head width) from a model config, whatever the family calls them."""
    heads = int(config.num_attention_heads)
    kv_heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_kv_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, int(kv_heads), int(head_dim)


def _qkv_stacked(config: Any) -> Packing:
    heads, kv_heads, head_dim = attention_heads(config)
    return Packing(1, {"W_q": heads * head_dim, "W_k": kv_heads * head_dim, "W_v": kv_heads * head_dim})


def _qkv_thirds(config: Any) -> Packing:
    """[q | k | v] of a family without grouped-query attention (whatever else its config says)."""
    width = config.hidden_size
    return Packing(1, {"W_q": width, "W_k": width, "W_v": width})


def _qkv_per_head(config: Any) -> Packing:
    heads, _, head_dim = attention_heads(config)
    return Packing(heads, {"W_q": head_dim, "W_k": head_dim, "W_v": head_dim})


def _qkv_multi_query(config: Any) -> Packing:
    heads, _, head_dim = attention_heads(config)
    return Packing(1, {"W_q": heads * head_dim, "W_k": head_dim, "W_v": head_dim})


def _falcon_qkv(config: Any) -> Packing:
    """FalconAttention._split_heads: three packings, chosen by two config flags."""
    heads, kv_heads, head_dim = attention_heads(config)
    if config.new_decoder_architecture:
        return Packing(kv_heads, {"W_q": heads // kv_heads * head_dim, "W_k": head_dim, "W_v": head_dim})
    return _qkv_multi_query(config) if config.multi_query else _qkv_per_head(config)


def _bigcode_qkv(config: Any) -> Packing:
    return _qkv_multi_query(config) if config.multi_query else _qkv_per_head(config)


CODEGEN_SHARDS = 4  # CodeGenAttention.mp_num


def _codegen_qkv(config: Any) -> Packing:
    """CodeGen's projection is interleaved over the 4 shards it was trained on, each [q | v | k]."""
    shard = config.hidden_size // CODEGEN_SHARDS
    return Packing(CODEGEN_SHARDS, {"W_q": shard, "W_v": shard, "W_k": shard})


def _gate_up(config: Any) -> Packing:
    return Packing(1, {"W_gate": config.intermediate_size, "W_up": config.intermediate_size})


@dataclass(frozen=True)
class Fused:
    """One projection holding several paper matrices, and how to read its packing off the config."""

    module: str
    packing: Callable[[Any], Packing]


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Family:
    """Where one family keeps its blocks, its token embedding and each paper matrix."""

    name: str
    model_types: tuple[str, ...]
    blocks: str  # the ModuleList of Transformer blocks, inside `model.base_model`
    embedding: str  # the input token embedding, inside `model.base_model`
    weights: Mapping[str, str]  # paper name -> module path inside a block (one matrix per module)
    fused: tuple[Fused, ...] = ()
    # paper names a config makes unreachable, with the reason (a forward that reads `.weight` directly)
    bypassed: Callable[[Any], dict[str, str]] = lambda config: {}


def _separate(q: str, k: str, v: str, o: str, **mlp: str) -> dict[str, str]:
    return {"W_q": q, "W_k": k, "W_v": v, "W_o": o, **mlp}


_LLAMA_ATTENTION = _separate("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


def _bloom_bypassed(config: Any) -> dict[str, str]:
    if getattr(config, "pretraining_tp", 1) > 1 and getattr(config, "slow_but_exact", False):
        reason = ("with pretraining_tp > 1 and slow_but_exact, Bloom multiplies slices of this weight directly, "
                  "around any module wrapped on it; load the model with slow_but_exact=false")
        return {"W_o": reason, "W_down": reason}
    return {}


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
                     "gemma3_text"),
           "layers", "embed_tokens",
           {**_LLAMA_ATTENTION, "W_gate": "mlp.gate_proj", "W_up": "mlp.up_proj", "W_down": "mlp.down_proj"}),
    Family("starcoder2", ("starcoder2",), "layers", "embed_tokens",
           {**_LLAMA_ATTENTION, "W_up": "mlp.c_fc", "W_down": "mlp.c_proj"}),
    Family("phi", ("phi",), "layers", "embed_tokens",
           _separate("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense",
                     W_up="mlp.fc1", W_down="mlp.fc2")),
    Family("phi3", ("phi3",), "layers", "embed_tokens", {"W_o": "self_attn.o_proj", "W_down": "mlp.down_proj"},
           fused=(Fused("self_attn.qkv_proj", _qkv_stacked), Fused("mlp.gate_up_proj", _gate_up))),
    Family("opt", ("opt",), "decoder.layers", "decoder.embed_tokens",
           _separate("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     W_up="fc1", W_down="fc2")),
    Family("gptj", ("gptj",), "h", "wte",
           _separate("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", W_up="mlp.fc_in",
                     W_down="mlp.fc_out")),
    Family("glm", ("glm", "glm4"), "layers", "embed_tokens", {**_LLAMA_ATTENTION, "W_down": "mlp.down_proj"},
           fused=(Fused("mlp.gate_up_proj", _gate_up),)),
    Family("gpt2", ("gpt2",), "h", "wte", {"W_o": "attn.c_proj", "W_up": "mlp.c_fc", "W_down": "mlp.c_proj"},
           fused=(Fused("attn.c_attn", _qkv_thirds),)),
    Family("mpt", ("mpt",), "blocks", "wte", {"W_o": "attn.out_proj", "W_up": "ffn.up_proj", "W_down": "ffn.down_proj"},
           fused=(Fused("attn.Wqkv", _qkv_thirds),)),
    Family("codegen", ("codegen",), "h", "wte", {"W_o": "attn.out_proj", "W_up": "mlp.fc_in", "W_down": "mlp.fc_out"},
           fused=(Fused("attn.qkv_proj", _codegen_qkv),)),
    Family("gpt_bigcode", ("gpt_bigcode",), "h", "wte",
           {"W_o": "attn.c_proj", "W_up": "mlp.c_fc", "W_down": "mlp.c_proj"},
           fused=(Fused("attn.c_attn", _bigcode_qkv),)),
    Family("gpt_neox", ("gpt_neox", "gpt_neox_japanese"), "layers", "embed_in",
           {"W_o": "attention.dense", "W_up": "mlp.dense_h_to_4h", "W_down": "mlp.dense_4h_to_h"},
           fused=(Fused("attention.query_key_value", _qkv_per_head),)),
    Family("persimmon", ("persimmon",), "layers", "embed_tokens",
           {"W_o": "self_attn.dense", "W_up": "mlp.dense_h_to_4h", "W_down": "mlp.dense_4h_to_h"},
           fused=(Fused("self_attn.query_key_value", _qkv_per_head),)),
    Family("bloom", ("bloom",), "h", "word_embeddings",
           {"W_o": "self_attention.dense", "W_up": "mlp.dense_h_to_4h", "W_down": "mlp.dense_4h_to_h"},
           fused=(Fused("self_attention.query_key_value", _qkv_per_head),), bypassed=_bloom_bypassed),
    Family("falcon", ("falcon",), "h", "word_embeddings",
           {"W_o": "self_attention.dense", "W_up": "mlp.dense_h_to_4h", "W_down": "mlp.dense_4h_to_h"},
           fused=(Fused("self_attention.query_key_value", _falcon_qkv),)),
    Family("bert", ("bert", "roberta"), "encoder.layer", "embeddings.word_embeddings",
           _separate("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     W_up="intermediate.dense", W_down="output.dense")),
)
BY_MODEL_TYPE: dict[str, Family] = {model_type: family for family in FAMILIES for model_type in family.model_types}
# what a fused q/k/v projection of a family not in the table tends to be called (for the refusal's reason)
_FUSED_QKV_NAME = re.compile(r"qkv|query_key_value|c_attn", re.IGNORECASE)


# ----------------------------------------------------------------------------- one model's layout


@dataclass(frozen=True)
class WeightTarget:
    """One paper matrix of a model: its module inside each block and, in a fused module, its rows."""

    module: str
    rows: Rows | None = None  # None: every output row of `module`
    packing: str = ""  # the fused module's order of rows, for people

    def describe(self) -> str:
        return self.module if self.rows is None else f"{self.module} rows {self.rows.describe()} of {self.packing}"


@dataclass(frozen=True)
class Layout:
    """The table resolved for one model: what each paper name means there, and what cannot be mapped."""

    family: str
    model_type: str
    recognised_by: str  # "model_type" (a row of FAMILIES) or "structure"
    blocks: str
    embedding: str
    weights: dict[str, WeightTarget]
    unmapped: dict[str, str] = field(default_factory=dict)  # paper name -> why it has no target

    def target(self, weight: str) -> WeightTarget:
        """The module (and rows) of paper weight `weight`, or a ConfigError saying why there is none."""
        if weight in self.weights:
            return self.weights[weight]
        why = self.unmapped.get(weight, "no such matrix in this family")
        raise ConfigError(f"weight {weight!r} does not exist in a {self.family} model ({why}); "
                          f"available there: {sorted(self.weights)} (paper names: {list(PAPER_WEIGHTS)})")

    @property
    def linear_modules(self) -> tuple[str, ...]:
        """The module of every paper matrix mapped here, a fused module once: the blocks' linear layers
        that QLoRA stores in 4 bits and pruning prunes."""
        return tuple(dict.fromkeys(target.module for target in self.weights.values()))

    def summary(self) -> dict[str, Any]:
        """What a run record says about the model's layout."""
        return {"family": self.family, "recognised_by": self.recognised_by, "blocks": self.blocks,
                "embedding": self.embedding,
                "weights": {weight: target.describe() for weight, target in self.weights.items()},
                "unmapped": dict(self.unmapped)}


_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, Layout] = weakref.WeakKeyDictionary()


def layout(model: nn.Module) -> Layout:
    """`model`'s layout: by model_type for a family of the table, else recognised by structure."""
    if model not in _LAYOUTS:  # resolved once per model: methods and per-step hooks ask often
        config = getattr(model, "config", None)
        model_type = str(getattr(config, "model_type", None))
        family = BY_MODEL_TYPE.get(model_type)
        _LAYOUTS[model] = _by_family(model, family) if family else _by_structure(model, model_type)
    return _LAYOUTS[model]


def _by_family(model: nn.Module, family: Family) -> Layout:
    body, config = backbone(model), model.config
    layers = _require_blocks(body, family.blocks, family.name)
    _require_module(body, family.embedding, f"the {family.name} row of methods/targets.py names the embedding")
    weights: dict[str, WeightTarget] = {}
    unmapped: dict[str, str] = {}
    for weight, path in family.weights.items():
        missing = _missing_in(layers, path)
        if missing is None:
            weights[weight] = WeightTarget(path)
        else:
            unmapped[weight] = missing + _moe_hint(layers)
    for fused in family.fused:
        weights.update(_split_fused(layers, fused, config, family.name))
    for weight, reason in family.bypassed(config).items():
        weights.pop(weight, None)
        unmapped[weight] = reason
    return Layout(family.name, model_type_of(model) or family.name, "model_type", family.blocks, family.embedding,
                  _ordered(weights), unmapped)


def _split_fused(layers: nn.ModuleList, fused: Fused, config: Any, family: str) -> dict[str, WeightTarget]:
    missing = _missing_in(layers, fused.module)
    if missing is not None:
        raise ConfigError(f"the {family} row of methods/targets.py names a fused `{fused.module}` in every block, "
                          f"but {missing}; is this model's config.model_type right?")
    packing = fused.packing(config)
    for index, block in enumerate(layers):
        out_features = module_shape(block.get_submodule(fused.module))[1]
        if packing.out_features != out_features:
            raise ConfigError(f"{family}: block {index}'s fused `{fused.module}` has {out_features} output rows, but "
                              f"the config's heads give the packing {packing.describe()} = {packing.out_features} "
                              f"rows; the model's config and weights disagree")
    return {weight: WeightTarget(fused.module, rows, packing.describe()) for weight, rows in packing.rows().items()}


def _by_structure(model: nn.Module, model_type: str) -> Layout:
    """A family the table does not name: find the blocks, then each paper matrix at a path some family uses."""
    body, config = backbone(model), getattr(model, "config", None)
    supported = sorted(BY_MODEL_TYPE)
    blocks_path = _find_blocks(body, getattr(config, "num_hidden_layers", None))
    embedding = _module_path(body, model.get_input_embeddings()) if hasattr(model, "get_input_embeddings") else None
    if blocks_path is None or embedding is None:
        raise ConfigError(f"model_type {model_type!r} is not in the table of methods/targets.py and its structure is "
                          f"not recognised (no list of config.num_hidden_layers blocks with an input embedding); "
                          f"supported by name: {supported}")
    layers = body.get_submodule(blocks_path)
    hidden = getattr(config, "hidden_size", None)
    weights: dict[str, WeightTarget] = {}
    unmapped: dict[str, str] = {}
    for weight in PAPER_WEIGHTS:
        candidates = list(dict.fromkeys(f.weights[weight] for f in FAMILIES if weight in f.weights))
        path = next((p for p in candidates if all(_fits(_projection(block, p), weight, hidden) for block in layers)),
                    None)
        if path is not None:
            weights[weight] = WeightTarget(path)
        else:
            unmapped[weight] = _why_unmapped(layers, weight, candidates)
    if not weights:
        raise ConfigError(f"model_type {model_type!r} is not in the table of methods/targets.py and none of its "
                          f"blocks' modules is at a path a known family uses for a paper matrix; methods that "
                          f"need no matrix (ft, bitfit, none) still apply; supported by name: {supported}")
    return Layout(model_type, model_type, "structure", blocks_path, embedding, _ordered(weights), unmapped)


def _why_unmapped(layers: nn.ModuleList, weight: str, candidates: list[str]) -> str:
    fused = [name for name, _ in layers[0].named_modules() if _FUSED_QKV_NAME.search(name.rsplit(".", 1)[-1])]
    if weight in ("W_q", "W_k", "W_v") and fused:
        return (f"q, k and v are fused in `{fused[0]}`, whose order of rows cannot be read off its shape; "
                "add the family's packing to methods/targets.py")
    return (f"no linear module at a path a known family uses ({', '.join(candidates)}) in every block, with the "
            f"expected shape{_moe_hint(layers)}")


def _fits(module: nn.Module | None, weight: str, hidden: int | None) -> bool:
    if module is None:
        return False
    if hidden is None:
        return True
    d_in, d_out = module_shape(module)
    return (weight not in _READS_HIDDEN or d_in == hidden) and (weight not in _WRITES_HIDDEN or d_out == hidden)


def _ordered(weights: dict[str, WeightTarget]) -> dict[str, WeightTarget]:
    return {weight: weights[weight] for weight in PAPER_WEIGHTS if weight in weights}


def _moe_hint(layers: nn.ModuleList) -> str:
    has_experts = any("expert" in name for name, _ in layers.named_modules())
    return " (a mixture-of-experts MLP has one such matrix per expert)" if has_experts else ""


def layout_summary(model: nn.Module) -> dict[str, Any]:
    """The record's word on a model's layout; for a model none of it maps, why (ft and bitfit still run)."""
    try:
        return layout(model).summary()
    except ConfigError as error:
        return {"family": model_type_of(model), "recognised_by": None, "weights": {}, "unmapped": str(error)}


# ----------------------------------------------------------------------------- module helpers


def model_type_of(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def backbone(model: nn.Module) -> nn.Module:
    """The Transformer body (GPT2Model, LlamaModel, BertModel ...) under any task head."""
    return getattr(model, "base_model", model)


def blocks(model: nn.Module) -> nn.ModuleList:
    return backbone(model).get_submodule(layout(model).blocks)


def block_linears(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(block, module path) of each of the blocks' linear layers (`Layout.linear_modules`), block by block."""
    paths = layout(model).linear_modules
    return [(block, path) for block in blocks(model) for path in paths]


def uncovered_block_matrices(model: nn.Module) -> dict[str, int]:
    """The blocks' weight matrices that `block_linears` does not reach (path within a block -> weights
    over all blocks): on a mixture of experts, the experts' MLPs. What pruning and 4-bit storage leave
    as they were, so a record can say its sparsity or its 4-bit share covers only part of the blocks."""
    covered = set(layout(model).linear_modules)
    counts: dict[str, int] = {}
    for block in blocks(model):
        for name, parameter in block.named_parameters():
            owner = name.rpartition(".")[0]
            if parameter.ndim >= 2 and owner not in covered:
                counts[name] = counts.get(name, 0) + parameter.numel()
    return counts


def matrices_text(counts: Mapping[str, int]) -> str:
    """`uncovered_block_matrices` as a log line names them: "mlp.experts.down_proj (49,152 weights), ..."."""
    return ", ".join(f"{path} ({count:,} weights)" for path, count in counts.items())


def weight_target(model: nn.Module, weight: str) -> WeightTarget:
    """The module (and fused rows) holding paper weight `weight`, or a ConfigError saying why not."""
    return layout(model).target(weight)


def unwrapped(module: nn.Module) -> nn.Module:
    """The frozen module under the methods' wrappers (each keeps it as `.base`)."""
    while hasattr(module, "base") and isinstance(module.base, nn.Module):
        module = module.base
    return module


def module_shape(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear or Conv1D (which stores its weight d_in × d_out), wrapped or not;
    of a 4-bit layer (bitsandbytes packs its weight in bytes), the shape its quantisation state keeps."""
    module = unwrapped(module)
    if isinstance(module, Conv1D):
        return tuple(module.weight.shape)
    state = getattr(module.weight, "quant_state", None)
    d_out, d_in = module.weight.shape if state is None else state.shape
    return d_in, d_out


def hidden_width(model: nn.Module) -> int:
    """Width of the hidden states between blocks (OPT's embedding can be narrower: word_embed_proj_dim)."""
    return int(model.config.hidden_size)


def _projection(block: nn.Module, path: str) -> nn.Module | None:
    try:
        module = block.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(unwrapped(module), (nn.Linear, Conv1D)) else None


def _missing_in(layers: nn.ModuleList, path: str) -> str | None:
    """Why `path` is not a linear module of every block (some families mix layer types), or None."""
    index = next((i for i, block in enumerate(layers) if _projection(block, path) is None), None)
    return None if index is None else f"block {index} has no linear `{path}`"


def _require_blocks(body: nn.Module, path: str, family: str) -> nn.ModuleList:
    layers = _require_module(body, path, f"the {family} row of methods/targets.py names the blocks")
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ConfigError(f"{family}: `{path}` is not a non-empty list of blocks in this model")
    return layers


def _require_module(body: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return body.get_submodule(path)
    except AttributeError:
        raise ConfigError(f"{what} `{path}`, but this {type(body).__name__} has none; is its config.model_type "
                          f"right?") from None


def _find_blocks(body: nn.Module, n_layers: int | None) -> str | None:
    """The first ModuleList of `n_layers` modules (the blocks), by breadth of path."""
    lists = [(name.count("."), name) for name, module in body.named_modules()
             if isinstance(module, nn.ModuleList) and n_layers and len(module) == n_layers and name]
    return min(lists)[1] if lists else None


def _module_path(body: nn.Module, target: nn.Module | None) -> str | None:
    return next((name for name, module in body.named_modules() if module is target and name), None)
