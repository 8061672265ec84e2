"""Where the paper's names live in each architecture: ONE table, used by every method.

The paper speaks of W_q, W_k, W_v, W_o (attention) and the MLP matrices; Hugging Face models name
them differently per family, and GPT-2 fuses W_q/W_k/W_v into one Conv1D `c_attn` whose output
columns are [q | k | v]. A weight is therefore a module path inside a block plus, for fused
modules, which equal part of the output it occupies. Unknown families and unknown weight names
raise ConfigError listing what exists (never a silent partial match, cf. peft #1959).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftrepro.errors import ConfigError

PAPER_WEIGHTS = ("W_q", "W_k", "W_v", "W_o", "W_up", "W_down", "W_gate")


@dataclass(frozen=True)
class WeightTarget:
    """One paper weight matrix: `module` (path inside a block), its part of a fused output, its shape."""

    module: str
    part: int = 0  # index of the equal slice of the module's output (fused c_attn: q=0, k=1, v=2)
    n_parts: int = 1
    in_dim: str = "d"  # keys of ModelDims, so formulas can be computed from the config alone
    out_dim: str = "d"


@dataclass(frozen=True)
class ArchSpec:
    """Named injection points of one architecture family, relative to `model.base_model`."""

    family: str
    blocks: str  # the ModuleList of Transformer blocks
    embedding: str  # the input token embedding
    weights: dict[str, WeightTarget]
    attn_output: str  # module whose output is the attention sublayer's output (before residual add)
    mlp_output: str  # module whose output is the MLP sublayer's output (before residual add)


def _bert_like(family: str) -> ArchSpec:
    return ArchSpec(
        family=family,
        blocks="encoder.layer",
        embedding="embeddings.word_embeddings",
        weights={
            "W_q": WeightTarget("attention.self.query"),
            "W_k": WeightTarget("attention.self.key"),
            "W_v": WeightTarget("attention.self.value"),
            "W_o": WeightTarget("attention.output.dense"),
            "W_up": WeightTarget("intermediate.dense", out_dim="d_ff"),
            "W_down": WeightTarget("output.dense", in_dim="d_ff"),
        },
        attn_output="attention.output.dense",
        mlp_output="output.dense",
    )


ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        family="gpt2",
        blocks="h",
        embedding="wte",
        weights={
            "W_q": WeightTarget("attn.c_attn", part=0, n_parts=3),
            "W_k": WeightTarget("attn.c_attn", part=1, n_parts=3),
            "W_v": WeightTarget("attn.c_attn", part=2, n_parts=3),
            "W_o": WeightTarget("attn.c_proj"),
            "W_up": WeightTarget("mlp.c_fc", out_dim="d_ff"),
            "W_down": WeightTarget("mlp.c_proj", in_dim="d_ff"),
        },
        attn_output="attn.c_proj",
        mlp_output="mlp.c_proj",
    ),
    "llama": ArchSpec(
        family="llama",
        blocks="layers",
        embedding="embed_tokens",
        weights={
            "W_q": WeightTarget("self_attn.q_proj"),
            "W_k": WeightTarget("self_attn.k_proj", out_dim="d_kv"),
            "W_v": WeightTarget("self_attn.v_proj", out_dim="d_kv"),
            "W_o": WeightTarget("self_attn.o_proj"),
            "W_up": WeightTarget("mlp.up_proj", out_dim="d_ff"),
            "W_gate": WeightTarget("mlp.gate_proj", out_dim="d_ff"),
            "W_down": WeightTarget("mlp.down_proj", in_dim="d_ff"),
        },
        attn_output="self_attn.o_proj",
        mlp_output="mlp.down_proj",
    ),
    "bert": _bert_like("bert"),
    "roberta": _bert_like("roberta"),
}


@dataclass(frozen=True)
class ModelDims:
    """Sizes the paper's formulas need, read from the model config (not from the modules)."""

    d: int  # d_model
    d_kv: int  # output width of W_k / W_v (smaller than d under grouped-query attention)
    d_ff: int  # MLP inner width
    n_layers: int  # L


def arch_spec(model: nn.Module) -> ArchSpec:
    """The injection table of `model`'s family (by `config.model_type`)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(
            f"architecture {model_type!r} is not supported by peftrepro.methods; "
            f"supported model_type values: {sorted(ARCHITECTURES)} (add a row to methods/targets.py)"
        )
    return ARCHITECTURES[model_type]


def model_dims(config) -> ModelDims:
    d = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    d_ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d
    return ModelDims(d=d, d_kv=kv_heads * head_dim, d_ff=d_ff, n_layers=config.num_hidden_layers)


def backbone(model: nn.Module) -> nn.Module:
    """The Transformer body (GPT2Model, LlamaModel, BertModel ...) under any task head."""
    return getattr(model, "base_model", model)


def blocks(model: nn.Module) -> nn.ModuleList:
    return backbone(model).get_submodule(arch_spec(model).blocks)


def weight_target(model: nn.Module, weight: str) -> WeightTarget:
    """The module (and fused part) holding paper weight `weight`, or a ConfigError listing the valid names."""
    spec = arch_spec(model)
    if weight not in spec.weights:
        raise ConfigError(
            f"weight {weight!r} does not exist in a {spec.family} model; "
            f"available there: {sorted(spec.weights)} (paper names: {list(PAPER_WEIGHTS)})"
        )
    return spec.weights[weight]


def weight_shape(config, weight: str, spec: ArchSpec) -> tuple[int, int]:
    """(d_in, d_out) of one paper weight matrix, from the config alone."""
    dims = model_dims(config)
    target = spec.weights[weight]
    return getattr(dims, target.in_dim), getattr(dims, target.out_dim)



def block_linear_paths(model: nn.Module) -> list[str]:
    """The blocks' linear layers: the module path of every paper weight inside a block, a fused
    module (GPT-2's c_attn) once. What QLoRA quantises and pruning prunes."""
    return sorted({target.module for target in arch_spec(model).weights.values()})
