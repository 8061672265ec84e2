"""Equivalent runs of different experiments train once (peftrepro.runs.reuse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftrepro.report.records import parse_record
from peftrepro.runs import records
from peftrepro.runs.execute import run_one
from peftrepro.runs.plan import resolved_config
from peftrepro.runs.reuse import equivalence_key

TABLE5_WQ = ("experiment=table_weight_type", "task=mnli", "method.ranks={W_q:8}")
TABLE6_WQ = ("experiment=table_rank", "task=mnli", "method.weights=[W_q]", "method.r=8")


def key(smoke, *overrides: str) -> str:
    return equivalence_key(resolved_config(smoke(*overrides)))


def test_ranks_and_weights_with_r_are_the_same_run(smoke) -> None:
    assert key(smoke, *TABLE5_WQ) == key(smoke, *TABLE6_WQ)


@pytest.mark.parametrize("change", ["seed=1", "method.alpha=16", "method.r=4", "task=wikisql", "train.lr=1e-3"])
def test_a_change_in_what_is_computed_is_another_run(smoke, change: str) -> None:
    assert key(smoke, *TABLE6_WQ, change) != key(smoke, *TABLE6_WQ)


def test_an_equivalent_finished_run_is_copied_not_retrained(smoke, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PEFTREPRO_DATA_ROOT", str(tmp_path))  # the root a fresh run's record names by its variable
    original = run_one(smoke(*TABLE5_WQ, f"data_root={tmp_path}"))
    reused = run_one(smoke(*TABLE6_WQ, f"data_root={tmp_path}"))
    assert original["config"]["data_root"] == reused["config"]["data_root"] == "$PEFTREPRO_DATA_ROOT"
    assert reused["reused_from"]["experiment"] == "table_weight_type"
    assert reused["reused_from"]["run_key"] == original["run_key"]
    assert reused["experiment"] == "table_rank" and reused["run_key"] != original["run_key"]
    assert reused["metrics"] == original["metrics"] and reused["timings"] == original["timings"]
    assert reused["method"]["weights"] == ["W_q"] and reused["config"]["experiment"] == "table_rank"
    copy = tmp_path / "results" / "runs" / "table_rank" / reused["run_key"]
    assert json.loads((copy / "record.json").read_text()) == json.loads(json.dumps(reused))
    assert not (copy / records.PREDICTIONS_FILE).exists() and not list(copy.glob("*.safetensors"))
    copied, first = (parse_record(folder / "record.json", json.loads((folder / "record.json").read_text()))
                     for folder in (copy, copy.parents[1] / "table_weight_type" / original["run_key"]))
    assert copied.predictions_path == first.predictions_path
    assert copied.example_scores("accuracy_m") == first.example_scores("accuracy_m") is not None
    assert not [p for p in copy.iterdir() if p.name.startswith(".tmp")]
    assert run_one(smoke(*TABLE6_WQ)) == reused  # now its own finished record: skipped


@pytest.mark.parametrize("switch", ["reuse_equivalent_runs=false", "force=true"])
def test_reuse_can_be_turned_off(smoke, switch: str) -> None:
    run_one(smoke(*TABLE5_WQ))
    trained = run_one(smoke(*TABLE6_WQ, switch))
    assert "reused_from" not in trained and trained["status"] == "ok"


@pytest.mark.parametrize("status", ["failed", "not_applicable"])
def test_only_an_ok_run_is_reused(smoke, tmp_path: Path, status: str) -> None:
    original = run_one(smoke(*TABLE5_WQ))
    record_file = tmp_path / "results" / "runs" / "table_weight_type" / original["run_key"] / "record.json"
    record_file.write_text(json.dumps({**original, "status": status}))
    assert "reused_from" not in run_one(smoke(*TABLE6_WQ))
