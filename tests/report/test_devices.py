"""report.devices: a run rerun on another device pairs with the record it replaced (kept in the archive)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from peftrepro.report.cells import build_table
from peftrepro.report.devices import ARCHIVE, DeviceGap, device_gaps, device_pairs, device_pairs_text
from peftrepro.report.specs import TABLES

LORA = {"name": "lora", "weights": ["W_q", "W_v"], "r": 8, "ranks": None, "alpha": 32}
GPU = {"gpu": "NVIDIA H200", "cpu_count": 16}
CPU = {"cpu": "AMD EPYC", "cpu_count": 2}


def store(folder: Path, record: dict, predictions: list[str] | None = None) -> None:
    path = folder / record["experiment"] / record["run_key"]
    path.mkdir(parents=True, exist_ok=True)
    (path / "record.json").write_text(json.dumps(record), encoding="utf-8")
    if predictions is not None:
        rows = [{"id": f"matched/{i}", "subset": "matched", "prediction": p} for i, p in enumerate(predictions)]
        with gzip.open(path / "predictions.jsonl.gz", "wt", encoding="utf-8") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)


def run(make_record, seed: int, accuracy: float, hardware: dict, minutes: int = 0, key: str | None = None) -> dict:
    record = make_record("table_methods", "mnli", LORA, seed, {"accuracy_m": accuracy}, profile="mini",
                         minutes=minutes, key=key or f"mnli-lora-s{seed}")
    return {**record, "env": {**record["env"], "hardware": hardware}}


@pytest.fixture
def archive(runs_dir: Path) -> Path:
    return runs_dir.parent / ARCHIVE / "runs"


def test_a_rerun_on_another_device_pairs_with_the_record_it_replaced(make_record, runs_dir, archive) -> None:
    for seed, (gpu, cpu) in enumerate(((0.62, 0.60), (0.61, 0.62))):
        store(archive, run(make_record, seed, gpu, GPU), ["entailment", "neutral", "neutral", "contradiction"])
        store(runs_dir, run(make_record, seed, cpu, CPU, minutes=60),
              ["entailment", "neutral", "entailment", "contradiction"])
    store(archive, run(make_record, 2, 0.5, GPU))  # no rerun of it yet: no pair
    store(runs_dir, run(make_record, 3, 0.5, CPU))  # no archived record: no pair
    pairs = device_pairs(runs_dir, "mini")
    assert [(p.later.seed, round(p.gap, 6), p.agreement) for p in pairs] == [(0, -2.0, 0.75), (1, 1.0, 0.75)]
    text = device_pairs_text(pairs)
    assert "Table 4, LoRA (r_q=r_v=8) × MNLI-m Acc. (%), seed 0" in text
    assert "GPU bf16 62.0 → CPU fp32 60.0; the same prediction on 75.0 % of examples" in text
    # mean -0.5, std 2.12 over 2 pairs: t(1 df) 12.71 · 2.12 / √2 = 19.06
    assert "Mean gap (CPU fp32 − GPU bf16): -0.50 ± 19.06 points (95 %, t with 1 df" in text


def test_gaps_keep_one_orientation_whichever_device_ran_first(make_record, runs_dir, archive) -> None:
    store(archive, run(make_record, 0, 0.62, GPU))
    store(runs_dir, run(make_record, 0, 0.60, CPU, minutes=60))
    store(archive, run(make_record, 1, 0.58, CPU))  # the other way round: CPU first, GPU rerun
    store(runs_dir, run(make_record, 1, 0.61, GPU, minutes=60))
    pairs = device_pairs(runs_dir, "mini")
    assert [round(p.gap, 6) for p in pairs] == [-2.0, -3.0]  # both CPU fp32 − GPU bf16
    assert "Mean gap (CPU fp32 − GPU bf16): -2.50 ±" in device_pairs_text(pairs)


def test_examples_without_an_id_are_matched_by_what_names_them(make_record, runs_dir, archive) -> None:
    """E2E predictions carry no id: the MR names each one, and runs of other MRs are not compared."""
    def e2e(seed: int, hardware: dict, mrs: list[str], outputs: list[str], minutes: int = 0) -> None:
        record = {**make_record("table_e2e", "e2e", LORA, seed, {"bleu": 0.6}, profile="mini", minutes=minutes,
                                key=f"e2e-s{seed}"), "env": {"git": {}, "hardware": hardware}}
        folder = (archive if minutes == 0 else runs_dir) / "table_e2e" / record["run_key"]
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps(record), encoding="utf-8")
        with gzip.open(folder / "predictions.jsonl.gz", "wt", encoding="utf-8") as file:
            file.writelines(json.dumps({"mr": mr, "prediction": out}) + "\n" for mr, out in zip(mrs, outputs))

    e2e(0, GPU, ["a", "b"], ["x", "y"])
    e2e(0, CPU, ["a", "b"], ["x", "z"], minutes=60)
    e2e(1, GPU, ["a", "b"], ["x", "y"])
    e2e(1, CPU, ["c", "d"], ["x", "y"], minutes=60)  # other MRs: no agreement to compute
    assert [p.agreement for p in device_pairs(runs_dir, "mini")] == [0.5, None]


@pytest.mark.parametrize("case", ["same device", "other profile", "a copy", "none archived", "failed rerun"])
def test_no_pair_without_two_devices_of_one_profile(make_record, runs_dir, archive, case) -> None:
    later = run(make_record, 0, 0.60, CPU, minutes=60)
    if case == "a copy":  # another table's copy of the rerun is not a run of its own
        later = {**later, "reused_from": {"experiment": "table_rank", "run_key": later["run_key"]}}
    if case == "failed rerun":  # its metrics, if any, are not a result
        later = {**later, "status": "failed", "metrics": {"accuracy_m": None}}
    store(runs_dir, later)
    if case != "none archived":
        earlier = run(make_record, 0, 0.62, CPU if case == "same device" else GPU)
        store(archive, {**earlier, "profile": "smoke"} if case == "other profile" else earlier)
    assert device_pairs(runs_dir, "mini") == [] and device_pairs_text([]) == ""


def test_a_table_carries_the_offsets_its_profile_measured_per_metric(make_record, runs_dir, archive) -> None:
    for seed, (gpu, cpu) in enumerate(((0.62, 0.60), (0.61, 0.62))):
        store(archive, run(make_record, seed, gpu, GPU))
        store(runs_dir, run(make_record, seed, cpu, CPU, minutes=60))
    e2e = {**run(make_record, 0, 0.0, GPU, key="e2e-s0"), "task": "e2e", "metrics": {"bleu": 0.60}}
    store(archive, e2e)
    store(runs_dir, {**e2e, "env": {**e2e["env"], "hardware": CPU}, "metrics": {"bleu": 0.65},
                     "created_at": run(make_record, 0, 0.0, CPU, minutes=60)["created_at"]})
    gaps = device_gaps(device_pairs(runs_dir, "mini"))
    assert gaps == (DeviceGap(("CPU fp32", "GPU bf16"), "accuracy_m", (-2.0, 1.0)),
                    DeviceGap(("CPU fp32", "GPU bf16"), "bleu", (5.0,)))
    assert build_table(TABLES["table_methods"], runs_dir, "mini").device_gaps == gaps
    text = device_pairs_text(device_pairs(runs_dir, "mini"))  # two metrics: each gap names its own
    assert "Mean gap on accuracy_m (CPU fp32 − GPU bf16): -0.50 ±" in text
    assert "Gap on bleu (CPU fp32 − GPU bf16): +5.00 points; one pair gives no interval." in text


def test_every_metric_both_runs_scored_has_its_gap_and_a_nan_makes_no_pair(make_record, runs_dir, archive) -> None:
    for seed, (gpu, cpu) in enumerate(((0.62, 0.60), (0.61, 0.62))):
        store(archive, {**run(make_record, seed, gpu, GPU), "metrics": {"accuracy_m": gpu, "accuracy_mm": gpu + 0.01}})
        store(runs_dir, {**run(make_record, seed, cpu, CPU, minutes=60),
                         "metrics": {"accuracy_m": cpu, "accuracy_mm": cpu - 0.01}})
    store(archive, run(make_record, 2, float("nan"), GPU))  # a failed score: no pair, and nothing breaks
    store(runs_dir, run(make_record, 2, 0.6, CPU, minutes=60))
    pairs = device_pairs(runs_dir, "mini")
    assert [p.later.seed for p in pairs] == [0, 1]
    assert [(g.metric, g.gaps) for g in device_gaps(pairs)] == [("accuracy_m", (-2.0, 1.0)),
                                                                ("accuracy_mm", (-4.0, -1.0))]
    assert [g.metric for g in device_gaps(pairs, primary_only=True)] == ["accuracy_m"]
    assert build_table(TABLES["table_methods"], runs_dir, "mini").device_gaps == device_gaps(pairs)
