"""Tiny random models of every layout the methods must handle (fixed seeds, built in milliseconds).

One per packing of q/k/v: GPT-2's [q|k|v]; GPT-NeoX, Bloom, Falcon and GPT-BigCode per head;
multi-query (Falcon's and GPT-BigCode's defaults); Falcon's KV groups; Phi-3's [q|k|v] under
grouped-query attention and its fused [gate|up]. Besides: grouped-query attention (Llama,
Mistral, Qwen2), attention biases (Qwen2), a head width other than d/heads (Gemma), an embedding
narrower than the hidden states (OPT's word_embed_proj_dim), parallel residuals (GPT-J,
GPT-NeoX, Phi, Falcon), ALiBi (Bloom) and an encoder (BERT).

`build_by_type(model_type)` builds any other causal LM of transformers from the same sizes, for
the families the tests do not name (`tests/methods/test_unnamed_families.py`).
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

TINY_VOCAB = 97
SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
SIZES = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "max_position_embeddings": 64}

Builder = Callable[[], tuple[type[PreTrainedModel], object]]


def _causal(model_type: str, **options) -> Builder:
    """A tiny config of `model_type` (standard size names; families map them through attribute_map)."""
    def make() -> tuple[type[PreTrainedModel], object]:
        config = AutoConfig.for_model(model_type, vocab_size=TINY_VOCAB, **{**SIZES, **SPECIAL, **options})
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)], config
    return make


TINY_CONFIGS: dict[str, Builder] = {
    "gpt2": lambda: (GPT2LMHeadModel, GPT2Config(
        vocab_size=TINY_VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, **SPECIAL)),
    # grouped-query attention (2 KV heads for 4 query heads) like SmolLM2, so W_k/W_v are not square
    "llama": lambda: (LlamaForCausalLM, LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **SPECIAL)),
    "bert": lambda: (BertForMaskedLM, BertConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=64, pad_token_id=0)),
    "mistral": _causal("mistral", intermediate_size=64, num_key_value_heads=2),
    "qwen2": _causal("qwen2", intermediate_size=64, num_key_value_heads=2),
    "gemma": _causal("gemma", intermediate_size=64, num_key_value_heads=1, head_dim=16),
    "phi": _causal("phi", intermediate_size=64),
    "phi3": _causal("phi3", intermediate_size=64, num_key_value_heads=2),
    "opt": _causal("opt", ffn_dim=64, word_embed_proj_dim=16),
    "gptj": _causal("gptj", n_inner=64, rotary_dim=4),
    "gpt_neox": _causal("gpt_neox", intermediate_size=64),
    "bloom": _causal("bloom"),
    "falcon": _causal("falcon"),  # multi_query=True is Falcon's default: [q | k | v], one k and v head
    "falcon-per-head": _causal("falcon", multi_query=False),
    "falcon-kv-groups": _causal("falcon", new_decoder_architecture=True, num_kv_heads=2),
    "gpt_bigcode": _causal("gpt_bigcode", n_inner=64),  # multi_query=True by default
    "gpt_bigcode-per-head": _causal("gpt_bigcode", n_inner=64, multi_query=False),
}
FAMILIES = list(TINY_CONFIGS)
CAUSAL_FAMILIES = [name for name in FAMILIES if name != "bert"]
BIAS_FREE = ["llama", "mistral", "gemma", "phi3"]  # BitFit is refused there (not applicable)
# the families whose q/k/v share one projection, with their packing of rows (the last four built by type)
FUSED_QKV = ["gpt2", "phi3", "gpt_neox", "bloom", "falcon", "falcon-per-head", "falcon-kv-groups", "gpt_bigcode",
             "gpt_bigcode-per-head", "codegen", "mpt", "persimmon", "gpt_neox_japanese"]
FUSED_GATE_UP = ["phi3", "glm"]

# Causal LMs of transformers the families above do not name, each built from its own config at the
# tiny sizes: `make test-full` runs the same table of checks on them (tests/methods/test_families.py).
# Recognised by model_type (a row of the table) or by structure; where a matrix cannot be mapped (a
# mixture-of-experts MLP, a fused q/k/v of an unknown family) the method needing it must be refused.
UNNAMED = [
    "apertus", "arcee", "biogpt", "bitnet", "codegen", "cohere", "cohere2", "cwm", "diffllama", "doge", "ernie4_5",
    "exaone", "exaone4", "gemma2", "gemma3_text", "glm", "glm4", "gpt-sw3", "gpt_neox_japanese", "granite", "helium",
    "hunyuan_v1_dense", "jais2", "ministral", "ministral3", "mpt", "nanochat", "nemotron", "olmo", "olmo2", "olmo3",
    "persimmon", "qwen3", "seed_oss", "smollm3", "stablelm", "starcoder2", "vaultgemma", "xglm",
    # partly mappable: mixture-of-experts MLPs, hybrid blocks, q/k/v fused in an unknown family
    "mixtral", "olmoe", "qwen2_moe", "flint", "lfm2", "openai-gpt", "modernbert-decoder",
    # nothing mappable (no attention, or unknown names): only ft and bitfit apply
    "mamba", "ctrl",
]


def build_tiny_model(family: str, seed: int = 0, **overrides) -> PreTrainedModel:
    """A family of TINY_CONFIGS by its name, any other causal LM by its model_type (`build_by_type`)."""
    if family not in TINY_CONFIGS:
        return build_by_type(family, seed)
    model_cls, config = TINY_CONFIGS[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return model_cls(config).eval()


BY_TYPE_OPTIONS = {"codegen": {"rotary_dim": 4}}  # its default rotary width exceeds the tiny heads


def build_by_type(model_type: str, seed: int = 0) -> PreTrainedModel:
    """Any causal LM of transformers at the tiny sizes (GQA where the family has it)."""
    options = {"intermediate_size": 64, "num_key_value_heads": 2, "head_dim": 8, **BY_TYPE_OPTIONS.get(model_type, {})}
    model_cls, config = _causal(model_type, **options)()
    torch.manual_seed(seed)
    return model_cls(config).eval()
