"""Fixtures of the metric tests: where the real E2E files are, if they are there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def e2e_data_dir() -> Path:
    """$PEFTREPRO_DATA_ROOT/e2e (the tests that need it skip without it)."""
    root = os.environ.get("PEFTREPRO_DATA_ROOT")
    return Path(root or REPO_ROOT / "data") / "e2e"


@pytest.fixture
def tgen_files() -> tuple[Path, Path]:
    """(TGen's test-set output, the official test references); skips when absent."""
    data = e2e_data_dir()
    predictions, references = data / "reference_outputs" / "tgen.tsv", data / "test.csv.gz"
    if not (predictions.is_file() and references.is_file()):
        pytest.skip(f"E2E reference files not found under {data}")
    return predictions, references
