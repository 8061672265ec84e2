"""Run keys come from what a run means; files are written atomically."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from peftrepro.paths import project_root
from peftrepro.runs import records

BASE = {"model": {"name": "tiny-gpt2"}, "task": {"name": "e2e", "max_length": 512},
        "method": {"name": "lora", "r": 4}, "train": {"lr": 2e-4, "progress": True, "log_every": 10},
        "decoding": {"num_beams": 1}, "use_fixtures": True, "seed": 0, "merge_for_eval": True,
        "experiment": "adhoc", "results_dir": "results", "force": False, "logger": {"name": "none"},
        "data_root": "/data", "debug": {"fail_at": None}}


def key_with(**changes) -> str:
    config = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return records.run_key(config)


def test_key_is_readable_and_stable() -> None:
    assert key_with() == key_with()
    assert key_with().startswith("e2e-lora-tiny-gpt2-s0-")


@pytest.mark.parametrize("change", [{"seed": 1}, {"method__r": 8}, {"train__lr": 1e-4}, {"task__max_length": 256},
                                    {"model__name": "tiny-llama"}, {"decoding__num_beams": 10},
                                    {"use_fixtures": False}, {"merge_for_eval": False},
                                    {"debug": {"fail_at": "train"}}, {"model__dtype": "bf16"},
                                    {"method__quantize": {"quant_type": "nf4"}}])
def test_key_changes_with_what_the_run_computes(change) -> None:
    assert key_with(**change) != key_with()


@pytest.mark.parametrize("change", [{"experiment": "table5"}, {"results_dir": "/elsewhere"}, {"force": True},
                                    {"logger__name": "wandb"}, {"data_root": "/other/copy"},
                                    {"train__progress": False}, {"train__log_every": 1}, {"device": "cuda:1"},
                                    {"jobs_per_gpu": 2}, {"model__dtype": "fp32"}, {"method__quantize": None}])
def test_key_ignores_where_and_how_results_are_reported(change) -> None:
    assert key_with(**change) == key_with()


def test_a_partial_quantize_node_has_the_key_of_its_spelled_out_form() -> None:
    spelled_out = {"quant_type": "nf4", "double_quant": True, "compute_dtype": "fp32", "blocksize": 64}
    assert key_with(method__quantize={"quant_type": "nf4"}) == key_with(method__quantize=spelled_out)
    assert key_with(method__quantize={"quant_type": "fp4"}) != key_with(method__quantize=spelled_out)


def test_movement_scores_as_a_plain_sum_keep_the_key_of_runs_made_before_the_option() -> None:
    before = {"name": "movement_pruning", "remaining": 0.8}
    assert key_with(method=before | {"scores": "sum", "score_lr": 0.01}) == key_with(method=before)
    assert key_with(method=before | {"scores": "sum", "score_lr": 0.5}) == key_with(method=before)  # Adam's alone
    adam = key_with(method=before | {"scores": "adam", "score_lr": 0.01})
    assert adam != key_with(method=before) and adam != key_with(method=before | {"scores": "adam", "score_lr": 0.1})
    magnitude = {"name": "magnitude_pruning", "remaining": 0.8, "scores": "sum"}  # another method's option: kept
    assert key_with(method=magnitude) != key_with(method={"name": "magnitude_pruning", "remaining": 0.8})


@pytest.mark.parametrize("recorded, as_run", [
    ({"name": "movement_pruning", "remaining": 0.8}, {"name": "movement_pruning", "remaining": 0.8, "scores": "sum"}),
    ({"name": "movement_pruning", "scores": "adam"}, {"name": "movement_pruning", "scores": "adam"}),
    ({"name": "magnitude_pruning", "remaining": 0.8}, {"name": "magnitude_pruning", "remaining": 0.8}),
])
def test_a_movement_record_of_before_the_scores_option_reads_as_the_plain_sum_it_ran(recorded, as_run) -> None:
    assert records.method_as_run(recorded) == as_run


def test_key_holds_the_model_cache_folder_at_one_value() -> None:
    """A converted model cached elsewhere (PEFTREPRO_CACHE) is the same model: it finds the same run."""
    assert key_with(model__cache_dir="/scratch/models") == key_with(model__cache_dir=".cache/models") != key_with()


def test_key_changes_with_the_padding_as_dropout_draws_over_the_padded_batch() -> None:
    assert key_with(train__pad_multiple=8) != key_with(train__pad_multiple=64)


def test_the_committed_runs_keep_their_keys_now_that_configs_name_the_dtype() -> None:
    """Records made before `model.dtype` existed: a config composed today (dtype: fp32) has their key."""
    runs = [(path, json.loads(path.read_text())) for path in (project_root() / "results" / "runs").glob("*/*/record.json")]
    runs = [(path, record) for path, record in runs if isinstance(record["config"].get("model"), dict)]  # not latency
    assert runs
    for path, record in runs:
        config = {**record["config"], "model": {**record["config"]["model"], "dtype": "fp32"}}
        assert records.run_key(config) == record["run_key"] == path.parent.name, path


@pytest.mark.parametrize("dtype, trainable", [("fp32", None), ("bf16", "fp32"), ("fp16", "fp32")])
def test_a_half_precision_run_keys_that_a_methods_own_parameters_are_fp32(dtype, trainable) -> None:
    keyed = records.semantic_config({**BASE, "model": {**BASE["model"], "dtype": dtype}})["model"]
    assert keyed.get("trainable_dtype") == trainable
    assert (key_with(model__dtype=dtype) == key_with()) == (dtype == "fp32")


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    records.write_record(tmp_path, {"status": "ok", "n": 1})
    records.write_record(tmp_path, {"status": "ok", "n": 2})
    assert records.read_record(tmp_path) == {"status": "ok", "n": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
    assert (tmp_path / "record.json").stat().st_mode & 0o044, "records are readable by others"


def test_interrupted_write_keeps_the_old_file(tmp_path: Path) -> None:
    records.write_record(tmp_path, {"status": "ok"})

    class Unserialisable:
        def __str__(self) -> str:
            raise KeyboardInterrupt  # a kill in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        records.write_record(tmp_path, {"status": "failed", "x": Unserialisable()})
    assert records.read_record(tmp_path) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


@pytest.mark.parametrize(("content", "finished"), [(None, False), ("{not json", False),
                                                   ('{"status": "failed"}', False), ('{"status": "ok"}', True)])
def test_only_a_readable_ok_record_counts_as_finished(tmp_path: Path, content: str | None, finished: bool) -> None:
    if content is not None:
        (tmp_path / "record.json").write_text(content)
    assert records.is_finished(tmp_path) is finished


def test_relative_results_dir_is_under_the_project_root(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # outside any checkout: the one this package runs from
    directory = records.run_dir("results", "table 5", "k")
    assert directory == project_root() / "results" / "runs" / "table_5" / "k"
    assert directory == records.run_folder(project_root() / "results" / "runs", "table 5", "k")
    assert (project_root() / "conf" / "config.yaml").is_file()


def test_inside_another_checkout_relative_paths_count_from_it(monkeypatch, tmp_path: Path) -> None:
    """A second checkout sharing one virtualenv (a worktree, another clone): a run, the aggregation and
    make all resolve results/ in the checkout they are started in."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("{}\n")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert project_root() == tmp_path.resolve()
    assert records.run_dir("results", "t", "k") == tmp_path.resolve() / "results" / "runs" / "t" / "k"


def test_predictions_are_gzipped_jsonl_with_reproducible_bytes(tmp_path: Path) -> None:
    import gzip

    rows = [{"prediction": "a"}, {"prediction": "é"}]
    path = records.write_predictions(tmp_path, rows)
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
    assert [json.loads(line)["prediction"] for line in lines] == ["a", "é"]
    assert records.read_predictions(path) == rows and records.predictions_path(tmp_path) == path
    first = path.read_bytes()
    records.write_predictions(tmp_path, rows)
    assert path.read_bytes() == first  # no timestamp in the gzip header


def test_a_plain_predictions_file_of_an_older_record_is_still_read(tmp_path: Path) -> None:
    (tmp_path / records.LEGACY_PREDICTIONS_FILE).write_text('{"prediction": "old"}\n', encoding="utf-8")
    assert records.predictions_path(tmp_path) == tmp_path / records.LEGACY_PREDICTIONS_FILE
    assert records.read_predictions(records.predictions_path(tmp_path)) == [{"prediction": "old"}]
