"""Equivalent runs of different experiments train once (peftrepro.runs.reuse)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftrepro.report.records import parse_record
from peftrepro.runs import records, reuse
from peftrepro.runs.execute import run_one
from peftrepro.runs.plan import resolved_config
from peftrepro.runs.reuse import equivalence_key, training_key

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


def test_a_copy_is_made_again_once_its_original_is_rerun(smoke) -> None:
    original = run_one(smoke(*TABLE5_WQ))
    run_one(smoke(*TABLE6_WQ))
    time.sleep(1.1)  # created_at counts seconds: the rerun must be told from the first run
    rerun = run_one(smoke(*TABLE5_WQ, "force=true"))
    assert rerun["created_at"] != original["created_at"] and "reused_from" not in rerun
    refreshed = run_one(smoke(*TABLE6_WQ))
    assert refreshed["reused_from"]["run_key"] == rerun["run_key"]
    assert refreshed["created_at"] == rerun["created_at"] and refreshed["metrics"] == rerun["metrics"]
    assert run_one(smoke(*TABLE6_WQ)) == refreshed  # current again: skipped


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


def test_an_original_that_is_no_longer_finished_when_copied_is_not_copied(smoke, tmp_path: Path, monkeypatch) -> None:
    original = run_one(smoke(*TABLE5_WQ))
    folder = tmp_path / "results" / "runs" / "table_weight_type" / original["run_key"]
    monkeypatch.setattr(reuse, "find_equivalent", lambda plan: folder)  # found while it was "ok", ...
    (folder / "record.json").unlink()  # ... then a forced rerun of it began
    table_run = run_one(smoke(*TABLE6_WQ))
    assert "reused_from" not in table_run and table_run["status"] == "ok"


def test_an_ad_hoc_run_is_never_copied_into_a_table(smoke) -> None:
    adhoc = run_one(smoke(*TABLE5_WQ[1:]))  # no experiment file: an uncommitted try
    assert adhoc["experiment"] == "adhoc"
    table_run = run_one(smoke(*TABLE6_WQ))
    assert "reused_from" not in table_run and "trained_in" not in table_run


def test_of_two_equivalent_originals_the_latest_is_copied(smoke, tmp_path: Path) -> None:
    latest = run_one(smoke(*TABLE5_WQ))
    older = tmp_path / "results" / "runs" / "peft_budget" / latest["run_key"]  # first in path order
    older.mkdir(parents=True)
    (older / "record.json").write_text(json.dumps({**latest, "experiment": "peft_budget",
                                                   "created_at": "2000-01-01T00:00:00+00:00"}))
    reused = run_one(smoke(*TABLE6_WQ))
    assert reused["reused_from"]["experiment"] == "table_weight_type"


# ---- a run that trains as another did, evaluated on another split, evaluates that run's weights

def run_folder(smoke, record: dict) -> Path:
    return Path(smoke().results_dir) / "runs" / record["experiment"] / record["run_key"]


# smoke evaluates every epoch and reports the best, which a run must do itself; mini does not
ONE_EVALUATION = "train.eval_every_epoch=false"
SELECTION_POINT = ("experiment=lr_search", "task=mnli", "method=lora", "method.weights=[W_q]", "method.r=8",
                   ONE_EVALUATION)
TABLE_RUN = (*TABLE6_WQ, "train.lr=1e-3", ONE_EVALUATION)  # lora's rate at lr_step 0 (lr_search.start)


def training(smoke, *overrides: str) -> str:
    return training_key(resolved_config(smoke(*overrides)))


def test_the_selection_point_and_the_table_run_train_alike(smoke) -> None:
    assert training(smoke, *SELECTION_POINT) == training(smoke, *TABLE_RUN)
    assert equivalence_key(resolved_config(smoke(*SELECTION_POINT))) != key(smoke, *TABLE_RUN)


@pytest.mark.parametrize("change", ["seed=1", "train.lr=3e-3", "task.max_train_examples=16", "method.r=4"])
def test_a_change_in_training_is_another_training(smoke, change: str) -> None:
    assert training(smoke, *TABLE_RUN, change) != training(smoke, *TABLE_RUN)


@pytest.mark.parametrize("change", ["task.eval_split=validation_mismatched", "task.max_eval_examples=2",
                                    "decoding.batch_size=3", "merge_for_eval=false"])
def test_what_a_run_is_evaluated_on_is_not_its_training(smoke, change: str) -> None:
    assert training(smoke, *TABLE_RUN, change) == training(smoke, *TABLE_RUN)


def test_a_run_trained_elsewhere_is_evaluated_not_retrained(smoke, monkeypatch) -> None:
    from peftrepro.runs import execute

    point = run_one(smoke(*SELECTION_POINT))
    assert point["weights_kept"] and point["data"]["eval_split"] == "dev"
    with monkeypatch.context() as patched:
        patched.setattr(execute, "fit", lambda *args, **kwargs: pytest.fail("trained again"))
        evaluated = run_one(smoke(*TABLE_RUN))
    assert evaluated["trained_in"]["experiment"] == "lr_search"
    assert evaluated["trained_in"]["run_key"] == point["run_key"]
    assert evaluated["status"] == "ok" and "reused_from" not in evaluated
    assert evaluated["data"]["eval_split"] == "validation_matched" and "accuracy_m" in evaluated["metrics"]
    assert evaluated["training"] == point["training"] and evaluated["timings"]["train_s"] == 0.0
    trainer = evaluated["trained_in"]  # what the training cost, apart from this run's own time and memory
    assert trainer["train_s"] == point["timings"]["train_s"] and trainer["throughput"] == point["throughput"]
    assert trainer["memory"]["train_peak_bytes"] == point["memory"]["train_peak_bytes"]
    assert "train_peak_bytes" not in evaluated["memory"] and evaluated["throughput"]["train_tokens_per_s"] is None
    assert trainer["git"] == point["env"]["git"] and trainer["created_at"] == point["created_at"]
    folders = run_folder(smoke, point), run_folder(smoke, evaluated)
    assert (folders[0] / "adapter.safetensors").samefile(folders[1] / "adapter.safetensors")  # linked, not copied
    assert evaluated["checkpoint_bytes"] == point["checkpoint_bytes"]
    retrained = run_one(smoke(*TABLE_RUN, "force=true"))  # the same training, here: the same weights
    assert "trained_in" not in retrained
    assert retrained["metrics"] == evaluated["metrics"]
    assert retrained["training"]["final_loss"] == pytest.approx(point["training"]["final_loss"], rel=1e-5)


@pytest.mark.parametrize("point_changes, run_changes", [
    ((), ("reuse_equivalent_runs=false",)),  # turned off
    (("train.eval_every_epoch=true",), ("train.eval_every_epoch=true",)),  # evaluates while it trains
    (("keep_weights=false",), ()),  # the point kept no weights to evaluate
    ((), ("lora_factors={layers:[last],weights:[W_q],ranks:[8]}",)),  # keeps LoRA's factors as initialised
])
def test_a_run_that_must_train_itself_trains(smoke, point_changes: tuple[str, ...],
                                             run_changes: tuple[str, ...]) -> None:
    run_one(smoke(*SELECTION_POINT, *point_changes))
    trained = run_one(smoke(*TABLE_RUN, *run_changes))
    assert "trained_in" not in trained and trained["status"] == "ok" and trained["timings"]["train_s"] > 0


def test_weights_on_another_file_system_are_copied(smoke, monkeypatch) -> None:
    from peftrepro.runs import reuse

    point = run_one(smoke(*SELECTION_POINT))
    monkeypatch.setattr(reuse.os, "link", lambda *args: (_ for _ in ()).throw(OSError(18, "cross-device link")))
    evaluated = run_one(smoke(*TABLE_RUN))
    assert evaluated["trained_in"]["run_key"] == point["run_key"]
    kept = [load_file(str(folder / "adapter.safetensors")) for folder in (run_folder(smoke, point),
                                                                           run_folder(smoke, evaluated))]
    assert not (run_folder(smoke, point) / "adapter.safetensors").samefile(run_folder(smoke, evaluated)
                                                                           / "adapter.safetensors")
    assert kept[0].keys() == kept[1].keys() and all(torch.equal(kept[0][k], kept[1][k]) for k in kept[0])


def test_the_weights_kept_are_the_weights_evaluated_when_the_trainer_is_rerun_meanwhile(smoke, monkeypatch) -> None:
    from safetensors.torch import save_file

    import peftrepro.methods

    point = run_one(smoke(*SELECTION_POINT))
    trainer_file = run_folder(smoke, point) / "adapter.safetensors"
    trained = load_file(str(trainer_file))
    load = peftrepro.methods.load_adapter

    def load_then_rerun_trainer(model, directory):
        applied = load(model, directory)
        replacement = trainer_file.with_name("rerun.safetensors")  # a rerun replaces its files by a rename
        save_file({name: torch.zeros_like(tensor) for name, tensor in trained.items()}, str(replacement))
        replacement.replace(trainer_file)
        return applied

    monkeypatch.setattr(peftrepro.methods, "load_adapter", load_then_rerun_trainer)
    evaluated = run_one(smoke(*TABLE_RUN))
    assert evaluated["trained_in"]["run_key"] == point["run_key"]
    kept = load_file(str(run_folder(smoke, evaluated) / "adapter.safetensors"))
    assert all(torch.equal(kept[name], trained[name]) for name in trained)


def test_a_scheduled_method_trains_itself(smoke) -> None:
    pruning = ("task=mnli", "method=magnitude_pruning", "train.lr=1e-3", ONE_EVALUATION)
    run_one(smoke("experiment=lr_search", *pruning))
    assert "trained_in" not in run_one(smoke("experiment=table_pruning", *pruning, "reuse_equivalent_runs=true"))


def test_a_set_up_given_up_counts_in_the_load_time(smoke, monkeypatch) -> None:
    import peftrepro.models

    point = run_one(smoke(*SELECTION_POINT))
    another_start = {**point, "model": {**point["model"], "weights_sha256": "0" * 64}}
    (run_folder(smoke, point) / "record.json").write_text(json.dumps(another_start))
    load = peftrepro.models.load_model

    def slow_load(*args, **kwargs):
        time.sleep(0.5)
        return load(*args, **kwargs)

    monkeypatch.setattr(peftrepro.models, "load_model", slow_load)
    trained = run_one(smoke(*TABLE_RUN))
    assert "trained_in" not in trained and trained["timings"]["load_s"] >= 1.0  # both set-ups loaded a model


@pytest.mark.parametrize("tamper", [
    {"data": {"train_tokens_per_epoch": 1}},  # e.g. a tokenizer that changed since
    {"model": {"weights_sha256": "0" * 64}},  # another base: a re-converted GGUF, another hub revision
    {"memory": {"device": "cuda:NVIDIA H100"}},  # another device type, so another precision under "auto"
])
def test_weights_trained_from_another_start_are_not_evaluated(smoke, tamper, caplog) -> None:
    point = run_one(smoke(*SELECTION_POINT))
    changed = {**point, **{part: {**point[part], **values} for part, values in tamper.items()}}
    (run_folder(smoke, point) / "record.json").write_text(json.dumps(changed))
    trained = run_one(smoke(*TABLE_RUN))
    assert "trained_in" not in trained and trained["status"] == "ok" and trained["timings"]["train_s"] > 0
    assert "trains itself: the weights of" in caplog.text and "another start" in caplog.text


def test_an_original_rewritten_while_its_weights_load_is_not_evaluated(smoke, monkeypatch, caplog) -> None:
    from peftrepro import methods

    point = run_one(smoke(*SELECTION_POINT))
    load = methods.load_adapter

    def load_then_rerun_original(model, folder):
        applied = load(model, folder)
        (run_folder(smoke, point) / "record.json").write_text(json.dumps({**point, "created_at": "later"}))
        return applied

    monkeypatch.setattr(methods, "load_adapter", load_then_rerun_original)
    assert "trained_in" not in run_one(smoke(*TABLE_RUN))
    assert "changed or vanished while its weights were loaded" in caplog.text


@pytest.mark.parametrize("missing", ["adapter.safetensors", "method.json"])
def test_an_original_without_its_weights_is_not_evaluated(smoke, missing: str) -> None:
    point = run_one(smoke(*SELECTION_POINT))
    (run_folder(smoke, point) / missing).unlink()
    assert "trained_in" not in run_one(smoke(*TABLE_RUN))


@pytest.mark.parametrize(("file", "text"), [("adapter.safetensors", "not a safetensors file"),
                                            ("method.json", '{"method": "lora", "options": {"r": -1}}')])
def test_a_checkpoint_that_does_not_load_is_trained_again_not_a_failed_cell(smoke, file, text, caplog) -> None:
    point = run_one(smoke(*SELECTION_POINT))
    (run_folder(smoke, point) / file).write_text(text)
    trained = run_one(smoke(*TABLE_RUN))
    assert trained["status"] == "ok" and "trained_in" not in trained
    assert "its checkpoint does not load here" in caplog.text


def test_the_run_that_trained_the_weights_is_named_never_one_that_evaluated_them(smoke) -> None:
    point = run_one(smoke(*SELECTION_POINT))
    evaluated = run_one(smoke(*TABLE_RUN))  # the latest match, were runs that evaluated weights candidates:
    (run_folder(smoke, evaluated) / "record.json").write_text(json.dumps({**evaluated, "created_at": "2999-01-01"}))
    again = run_one(smoke("experiment=table_methods", "task=mnli", "method=lora", "method.ranks={W_q:8}",
                          "train.lr=1e-3", "task.eval_split=validation_mismatched", ONE_EVALUATION))
    assert again["trained_in"]["run_key"] == point["run_key"]


def test_a_copy_of_an_evaluated_run_names_both_origins(smoke) -> None:
    point = run_one(smoke(*SELECTION_POINT))
    evaluated = run_one(smoke(*TABLE_RUN))
    copied = run_one(smoke("experiment=table_weight_type", "task=mnli", "method.ranks={W_q:8}", "train.lr=1e-3",
                           ONE_EVALUATION))
    assert copied["reused_from"]["run_key"] == evaluated["run_key"]
    assert copied["trained_in"]["run_key"] == point["run_key"] and copied["metrics"] == evaluated["metrics"]
