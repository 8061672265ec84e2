"""Load the stand-alone scripts under experiments/ as modules (they are not part of the package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def load_script(name: str) -> ModuleType:
    if f"experiments_{name}" in sys.modules:
        return sys.modules[f"experiments_{name}"]
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench() -> ModuleType:
    return load_script("bench")


@pytest.fixture(scope="session")
def latency() -> ModuleType:
    return load_script("latency")


@pytest.fixture(scope="session")
def gpu_session() -> ModuleType:
    return load_script("gpu_session")


@pytest.fixture(scope="session")
def gpu_sweep() -> ModuleType:
    return load_script("gpu_sweep")
