"""Shared test fixtures: tiny random models (tests/tiny_models.py: one per layout, fixed seeds,
built in ms), and the stand-alone scripts under experiments/ loaded as modules.

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
from transformers import PreTrainedModel

from tiny_models import build_tiny_model

# Tiny models gain nothing from intra-op threads and the test machines share their cores:
# oversubscribed threads made a 60-step test loop 30x slower.
torch.set_num_threads(1)


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
