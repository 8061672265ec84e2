"""The committed tables under results/tables are generated, never edited: regenerating each from
its committed records (or, for the parameter table, from the code alone) gives the same bytes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TABLES = REPO / "results" / "tables"


def _latency_script():
    spec = importlib.util.spec_from_file_location("latency", REPO / "experiments" / "latency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (TABLES / "table_latency.md").exists(), reason="no committed latency table")
def test_latency_table_is_regenerated_from_its_record(tmp_path: Path) -> None:
    (record,) = (REPO / "results" / "runs" / "table_latency").glob("*/record.json")
    _latency_script().main(["--from-record", str(record), "--results-dir", str(tmp_path)])
    for name in ("table_latency.md", "table_latency.csv"):
        assert (tmp_path / "tables" / name).read_bytes() == (TABLES / name).read_bytes(), name


@pytest.mark.skipif(not (TABLES / "params.md").exists(), reason="no committed parameter table")
def test_parameter_table_is_regenerated_by_the_code(tmp_path: Path) -> None:
    from peftrepro.methods import params_table

    params_table.main(["--out", str(tmp_path)])
    for name in ("params.md", "params.csv"):
        assert (tmp_path / name).read_bytes() == (TABLES / name).read_bytes(), name
