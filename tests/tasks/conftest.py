"""Shared fixtures for the task tests: the fixture data root, the tiny tokenizer, tiny models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pytest
import torch

from peftrepro.interfaces import IGNORE_INDEX, EncodedExample
from peftrepro.tasks import write_fixtures
from peftrepro.tasks.testing import build_tiny_model, build_tiny_tokenizer

REAL_DATA = Path(os.environ.get("PEFTREPRO_DATA_ROOT", "data"))


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    return write_fixtures(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run ~100x faster on one thread when the shared CPU is oversubscribed."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _no_ambient_data_root(monkeypatch):
    """Tests name their data root explicitly; an exported one must not leak in."""
    monkeypatch.delenv("PEFTREPRO_DATA_ROOT", raising=False)


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    if not (REAL_DATA / "e2e" / "test.csv.gz").is_file():
        pytest.skip(f"real data not found under {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def memorise():
    """`memorise(tokenizer, encoded, ...)`: see `_memorise`."""
    return _memorise


def _memorise(tokenizer, encoded: Sequence[EncodedExample], steps: int = 150, architecture: str = "gpt2",
             lr: float = 1e-2) -> torch.nn.Module:
    """A tiny model trained until it reproduces `encoded` (loss on the labelled tokens only)."""
    model = build_tiny_model(tokenizer, architecture, seed=0)
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    labels = torch.full((len(encoded), width), IGNORE_INDEX)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, example in enumerate(encoded):
        n = len(example.input_ids)
        ids[row, :n], labels[row, :n], mask[row, :n] = (torch.tensor(example.input_ids),
                                                        torch.tensor(example.labels), 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model
