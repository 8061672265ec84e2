"""Shared test fixtures: tiny random models of each supported family (fixed seeds, built in ms),
and the stand-alone scripts under experiments/ loaded as modules.

Each model fixture returns a fresh model in eval mode (methods modify models in place).
`tiny_model` builds any family by name, for tests parametrised over families.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

# Tiny models gain nothing from intra-op threads and the test machines share their cores:
# oversubscribed threads made a 60-step test loop 30x slower.
torch.set_num_threads(1)

TINY_VOCAB = 97
_SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

TINY_CONFIGS: dict[str, Callable[[], tuple[type[PreTrainedModel], object]]] = {
    "gpt2": lambda: (GPT2LMHeadModel, GPT2Config(
        vocab_size=TINY_VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, **_SPECIAL)),
    # grouped-query attention (2 KV heads for 4 query heads) like SmolLM2, so W_k/W_v are not square
    "llama": lambda: (LlamaForCausalLM, LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **_SPECIAL)),
    "bert": lambda: (BertForMaskedLM, BertConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=64, pad_token_id=0)),
}


def build_tiny_model(family: str, seed: int = 0) -> PreTrainedModel:
    model_cls, config = TINY_CONFIGS[family]()
    torch.manual_seed(seed)
    return model_cls(config).eval()


@pytest.fixture
def tiny_model() -> Callable[..., PreTrainedModel]:
    return build_tiny_model


@pytest.fixture
def tiny_gpt2() -> PreTrainedModel:
    return build_tiny_model("gpt2")


@pytest.fixture
def tiny_llama() -> PreTrainedModel:
    return build_tiny_model("llama")


@pytest.fixture
def tiny_bert() -> PreTrainedModel:
    return build_tiny_model("bert")


# ---- experiments/*.py (scripts, not part of the package), one module per script and session

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_script(name: str) -> ModuleType:
    if f"experiments_{name}" in sys.modules:
        return sys.modules[f"experiments_{name}"]
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered while it executes
    spec.loader.exec_module(module)
    return module


def _script_fixture(name: str) -> Callable[[], ModuleType]:
    @pytest.fixture(scope="session", name=name)
    def script() -> ModuleType:
        return load_script(name)
    return script


bench, latency = map(_script_fixture, ("bench", "latency"))
