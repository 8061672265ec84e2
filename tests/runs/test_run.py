"""End-to-end smoke runs on CPU: records, skipping, determinism, failure isolation, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException

from peftrepro.errors import PeftReproError
from peftrepro.paths import project_root
from peftrepro.runs import records
from peftrepro.runs.execute import InjectedFailure, run_one
from peftrepro.runs.resume import RESUME_FILE

RECORD_KEYS = {"schema_version", "run_key", "experiment", "status", "error", "config", "seed", "profile", "model",
               "task", "method", "metrics", "metrics_per_epoch", "best_epoch", "params", "checkpoint_bytes",
               "data", "timings", "throughput", "memory", "weights", "env", "created_at"}
PRIMARY = {"e2e": "bleu", "wikisql": "lf_accuracy", "mnli": "accuracy_m"}


def files_under(root: Path) -> list[Path]:
    """The files a run left under `root`, its claim's lock file aside (an empty bookkeeping file)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts) if root.exists() else []


def assert_complete(record: dict, directory: Path) -> None:
    assert RECORD_KEYS <= set(record) and record["status"] == "ok" and record["error"] is None
    assert PRIMARY[record["task"]] in record["metrics"]
    assert [row["epoch"] for row in record["metrics_per_epoch"]] == [1, 2]  # smoke evaluates every epoch
    assert record["best_epoch"] in (1, 2)
    assert 0 < record["params"]["trainable"] <= record["params"]["total"]
    assert record["checkpoint_bytes"] == (directory / "adapter.safetensors").stat().st_size
    assert (directory / "method.json").is_file()
    assert len(records.read_predictions(directory / records.PREDICTIONS_FILE)) >= 1
    assert all(record["timings"][k] >= 0 for k in ("load_s", "train_s", "eval_s", "total_s"))
    assert record["throughput"]["train_tokens_per_s"] > 0
    assert record["memory"]["peak_bytes"] >= record["memory"]["train_peak_bytes"] > 0
    assert record["env"]["packages"]["torch"] and record["weights"]["frozen_bytes"] + record["weights"]["trainable_bytes"] > 0
    assert record["threads"]["torch"] == record["env"]["hardware"]["torch_threads"] >= 1
    assert set(record["env"]["git"]) == {"commit", "dirty"}
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp")]
    assert json.loads((directory / "record.json").read_text()) == json.loads(json.dumps(record))


@pytest.mark.parametrize("method", ["lora", "adapter_h", "prefix_layer", "ft"])
@pytest.mark.parametrize("task", ["e2e", "wikisql", "mnli"])
def test_smoke_run_writes_a_complete_record(smoke, tmp_path: Path, task: str, method: str) -> None:
    record = run_one(smoke(f"task={task}", f"method={method}"))
    directory = tmp_path / "results" / "runs" / "adhoc" / record["run_key"]
    assert_complete(record, directory)
    assert record["method"]["name"] == method and record["profile"] == "smoke"
    if method == "ft":
        assert record["params"]["trainable"] == record["params"]["total"]


def test_a_pruning_run_reports_only_the_model_at_its_target_sparsity(smoke, tmp_path: Path) -> None:
    record = run_one(smoke("task=mnli", "method=movement_pruning", "method.remaining=0.2"))
    assert_complete(record, tmp_path / "results" / "runs" / "adhoc" / record["run_key"])
    assert record["best_epoch"] == 2  # epoch 1 ends mid-schedule: evaluated, logged, never the result
    assert [row["epoch"] for row in record["metrics_per_epoch"]] == [1, 2]
    pruning = record["pruning"]
    assert pruning["target_remaining"] == 0.2 and pruning["measured_remaining"] == pytest.approx(0.2, abs=1e-3)
    assert record["weights"]["block_linear_density"] == pruning["measured_remaining"]


@pytest.mark.parametrize("cpu_repacks_for_inference", [False, True])
def test_a_qlora_run_records_its_4bit_base(smoke, tmp_path: Path, monkeypatch, cpu_repacks_for_inference) -> None:
    """Also where bitsandbytes would repack 4-bit weights for CPU inference (AVX512-BF16): the smoke run
    evaluates after its first epoch and trains on."""
    bnb_modules = pytest.importorskip("bitsandbytes.nn.modules")
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: cpu_repacks_for_inference)
    record = run_one(smoke("task=mnli", "method=qlora"))
    assert_complete(record, tmp_path / "results" / "runs" / "adhoc" / record["run_key"])
    assert record["method"]["quantize"]["quant_type"] == "nf4" and record["config"]["merge_for_eval"] is False
    base_weights = record["params"]["total"] - record["params"]["trainable"]  # counted as the weights they stand for
    # tiny GPT-2: the blocks' linear layers are about half of its weights, now half a byte each instead of 4
    assert record["weights"]["frozen_bytes"] < 0.6 * 4 * base_weights


def test_prefix_longer_than_max_length_trains_on_the_whole_example(smoke, tmp_path: Path) -> None:
    # 24 + 8 virtual tokens on top of 16 tokens of each example (PreEmbed at mini: 264 on top of 256)
    record = run_one(smoke("task=mnli", "method=prefix_embed", "task.max_length=16", "method.prefix_length=24"))
    assert record["status"] == "ok"
    assert record["data"]["train_tokens_per_epoch"] == record["data"]["train_examples"] * (16 + 24 + 8)


def test_rerun_is_skipped_unless_forced_and_same_seed_repeats(smoke, tmp_path: Path) -> None:
    cfg = smoke("task=mnli", "method=ft")
    first = run_one(cfg)
    record_file = tmp_path / "results" / "runs" / "adhoc" / first["run_key"] / "record.json"
    written = record_file.stat().st_mtime_ns
    assert run_one(cfg) == first and record_file.stat().st_mtime_ns == written  # skipped
    forced = run_one(smoke("task=mnli", "method=ft", "force=true"))
    assert forced["run_key"] == first["run_key"] and record_file.stat().st_mtime_ns > written
    assert forced["metrics_per_epoch"] == first["metrics_per_epoch"]
    assert forced["training"]["loss_curve"] == first["training"]["loss_curve"]
    other_seed = run_one(smoke("task=mnli", "method=ft", "seed=1"))
    assert other_seed["run_key"] != first["run_key"]
    assert other_seed["training"]["loss_curve"] != first["training"]["loss_curve"]


def test_the_record_fingerprints_the_starting_weights_whatever_the_run_seed(smoke) -> None:
    first, other_seed = (run_one(smoke("task=mnli", "method=lora", f"seed={seed}")) for seed in (0, 1))
    digest = first["model"]["weights_sha256"]
    assert len(digest) == 64 and other_seed["model"]["weights_sha256"] == digest
    assert run_one(smoke("model=tiny-llama", "task=mnli", "method=lora"))["model"]["weights_sha256"] != digest


@pytest.mark.parametrize("change", ["one value", "dtype"])
def test_the_weights_digest_sees_any_change_to_the_weights(tiny_model, change: str) -> None:
    from peftrepro.models import weights_sha256

    model = tiny_model("llama")
    before = weights_sha256(model)
    assert weights_sha256(tiny_model("llama")) == before  # same init, same digest
    if change == "one value":
        with torch.no_grad():
            model.lm_head.weight.view(-1)[-1] += 1e-3
    else:
        model.to(torch.bfloat16)
    assert weights_sha256(model) != before


def test_method_not_applicable_to_the_model_is_a_final_na_record(smoke, tmp_path: Path) -> None:
    record = run_one(smoke("model=tiny-llama", "task=mnli", "method=bitfit"))
    assert record["status"] == "not_applicable" and record["error"]["type"] == "NotApplicableError"
    assert "no bias parameters" in record["error"]["message"]
    assert run_one(smoke("model=tiny-llama", "task=mnli", "method=bitfit"))["created_at"] == record["created_at"]


@pytest.mark.parametrize("phase", ["setup", "train", "eval"])
def test_failure_leaves_a_failed_record_with_traceback(smoke, tmp_path: Path, phase: str) -> None:
    with pytest.raises(InjectedFailure):
        run_one(smoke("task=mnli", "method=lora", f"debug.fail_at={phase}"))
    (directory,) = (tmp_path / "results" / "runs" / "adhoc").iterdir()
    record = json.loads((directory / "record.json").read_text())
    assert record["status"] == "failed" and record["error"]["type"] == "InjectedFailure"
    assert "Traceback" in record["error"]["traceback"] and f"fail_at={phase}" in record["error"]["message"]
    # no half-made artefacts; an evaluation's failure leaves the training state saved before it (a rerun
    # only evaluates again)
    assert sorted(p.name for p in directory.iterdir()) == [*([RESUME_FILE] if phase == "eval" else []), "record.json"]


def test_a_forced_rerun_that_fails_keeps_the_finished_record(smoke, tmp_path: Path, monkeypatch) -> None:
    import peftrepro.runs.execute as execute

    first = run_one(smoke("task=mnli", "method=ft"))
    record_file = tmp_path / "results" / "runs" / "adhoc" / first["run_key"] / "record.json"

    def broken_fit(*args, **kwargs):
        raise RuntimeError("a crash while retraining")

    monkeypatch.setattr(execute, "fit", broken_fit)
    with pytest.raises(RuntimeError, match="a crash while retraining"):
        run_one(smoke("task=mnli", "method=ft", "force=true"))
    assert json.loads(record_file.read_text()) == first  # a failed record never replaces an ok one


def test_an_interrupted_run_is_recorded_as_interrupted_without_a_traceback(smoke, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_one(smoke("task=mnli", "method=lora", "debug.fail_at=interrupt"))
    (directory,) = (tmp_path / "results" / "runs" / "adhoc").iterdir()
    record = json.loads((directory / "record.json").read_text())
    assert record["status"] == "interrupted" and record["error"]["traceback"] == ""
    assert record["error"]["message"] == "interrupted (Ctrl-C or SIGTERM)"


def test_an_unreadable_record_is_named_and_its_run_made_again(smoke, tmp_path: Path, caplog) -> None:
    first = run_one(smoke("task=mnli", "method=ft"))
    record_file = tmp_path / "results" / "runs" / "adhoc" / first["run_key"] / "record.json"
    record_file.write_text('{"status": "ok", "metri')  # a truncated file, e.g. a disk that filled up
    with caplog.at_level("WARNING", logger="peftrepro.runs"):
        again = run_one(smoke("task=mnli", "method=ft"))
    assert again["status"] == "ok" and again["metrics"] == first["metrics"]
    assert f"{record_file} is unreadable (JSONDecodeError" in caplog.text and "running" in caplog.text


def test_wandb_runs_are_finished_one_by_one_even_when_a_run_fails(smoke, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the config's mode (offline) must decide
    logger = ["logger=wandb", "logger.mode=offline", f"logger.dir={tmp_path / 'wandb'}"]
    run_one(smoke("task=mnli", "method=lora", *logger))
    with pytest.raises(InjectedFailure):
        run_one(smoke("task=mnli", "method=lora", "seed=1", "debug.fail_at=train", *logger))
    assert wandb.run is None  # finished in a `finally`, so the next run of a sweep starts afresh (wandb #1314)
    assert len(list((tmp_path / "wandb").glob("wandb/offline-run-*"))) == 2


@pytest.mark.parametrize(("overrides", "error", "message"), [
    (["model=hub", "model.name_or_path=/nonexistent/model"], PeftReproError,
     "model.name_or_path=/nonexistent/model: no such local directory"),
    (["model=hub", "model.name_or_path=models/mine/gpt"], PeftReproError,  # a relative path, not an owner/name id
     "model.name_or_path=models/mine/gpt: no such local directory"),
    (["method.name=nope"], PeftReproError, "unknown method 'nope'"),
    (["task.name=nope"], PeftReproError, "unknown task 'nope'"),
    (["train.lr=-1e-4"], PeftReproError, r"train\.lr=-0\.0001 must be > 0"),
    (["train.epochs=0"], PeftReproError, "zero training steps"),
    (["use_fixtures=false", "data_root=/nonexistent/data"], PeftReproError, "data_root=/nonexistent/data"),
    (["method.r=0"], PeftReproError, r"option r must be an integer >= 1, got 0"),
    (["method=prefix_embed", "method.prefix_length=900"], PeftReproError,
     r"train\.max_length=512 example tokens \+ 908 virtual tokens .* exceed the model's context of 1024"),
    (["method=magnitude_pruning", "method.remaining=1.5"], PeftReproError,
     r"magnitude_pruning: method\.remaining .* above 0 and at most 1"),
    (["method=qlora", "merge_for_eval=true"], PeftReproError, "set merge_for_eval=false"),
    (["method=prompt_tuning", "method.infix_length=4"], PeftReproError, "infix_length must be 0"),
    (["model.dtype=fp8"], PeftReproError, r"model\.dtype='fp8' must be one of \['fp32', 'bf16', 'fp16'\]"),
    (["device=cuda:x"], PeftReproError, r"device='cuda:x' must be one of"),
    (["jobs_per_gpu=0"], PeftReproError, "jobs_per_gpu=0 must be an integer >= 1"),
    (["lora_factors={layers:[centre],weights:[W_q]}"], PeftReproError, "neither an index nor one of"),
    (["lora_factors={layers:[7],weights:[W_q,W_v]}"], PeftReproError, "not a layer of a 2-layer model"),
    (["model=nope"], HydraException, "model/nope"),
    (["method=nope"], HydraException, "method/nope"),
    (["task=nope"], HydraException, "task/nope"),
])
def test_bad_input_is_one_clear_error_and_nothing_is_written(smoke, tmp_path: Path, overrides, error,
                                                             message) -> None:
    with pytest.raises(error, match=message):
        run_one(smoke(*overrides))
    assert files_under(tmp_path / "results") == []


# ---- the command line, in subprocesses (slow to start: two processes cover it)

def cli(*arguments: str, results: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "java").exists())
    flags = [a for a in arguments if a.startswith("-")]  # Hydra's flags (-m) come before the overrides
    overrides = [a for a in arguments if not a.startswith("-")]
    return subprocess.run([sys.executable, "-m", "peftrepro.runs", *flags, "profile=smoke", f"results_dir={results}",
                           "train.progress=false", *overrides], cwd=results.parent, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_bad_input_exits_nonzero_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    result = cli("train.lr=-1", results=tmp_path / "results")
    assert result.returncode != 0
    assert "ConfigError: train.lr=-1 must be > 0" in result.stderr
    assert result.stdout.count("must be > 0") + result.stderr.count("must be > 0") == 1
    assert "Traceback" not in result.stderr
    assert files_under(tmp_path / "results") == []


def test_cli_interrupted_run_is_one_line_and_stops_the_sweep(tmp_path: Path) -> None:
    result = cli("-m", "task=mnli", "method=lora", "debug.fail_at=interrupt,null", results=tmp_path / "results")
    assert result.returncode == 130 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("interrupted: the run's record says status 'interrupted'")
    assert len(list((tmp_path / "results" / "runs" / "adhoc").iterdir())) == 1  # the second job never started


def test_cli_multirun_goes_on_after_a_failure_and_exits_nonzero(tmp_path: Path) -> None:
    result = cli("-m", "task=mnli", "method=lora", "debug.fail_at=train,null", results=tmp_path / "results")
    assert result.returncode != 0, result.stderr
    assert "InjectedFailure" in result.stderr
    statuses = sorted(json.loads(p.read_text())["status"] for p in (tmp_path / "results").rglob("record.json"))
    assert statuses == ["failed", "ok"]
    assert not list((project_root() / "results").glob(f"runs/**/{tmp_path.name}"))


def test_cli_sweep_whose_every_job_has_the_same_bad_input_logs_it_once(tmp_path: Path) -> None:
    result = cli("-m", "task=mnli", "method=lora", "seed=0,1,2", "method.r=0", results=tmp_path / "results")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count("[ERROR]") == 1 and "not logged again" in output  # the log: one line for three jobs
    assert output.count("option r must be an integer >= 1, got 0") == 2  # that line and Hydra's closing error
    assert files_under(tmp_path / "results") == []


@pytest.mark.slow
@pytest.mark.realdata
def test_mini_profile_on_real_data_with_smollm2(compose_config, tmp_path: Path) -> None:
    data_root = os.environ.get("PEFTREPRO_DATA_ROOT", "")
    if not data_root or not Path(data_root, "mnli").is_dir():
        pytest.skip("real data not found (set PEFTREPRO_DATA_ROOT)")
    record = run_one(compose_config("profile=mini", "task=mnli", "method=lora", f"data_root={data_root}", "train.lr=1e-3",
                                    "task.max_train_examples=32", "task.max_eval_examples=8",
                                    f"results_dir={tmp_path}", "train.progress=false"))
    assert record["status"] == "ok" and record["model"]["model_type"] == "llama"
    assert record["params"]["total"] > 100_000_000 and record["data"]["source"] == "$PEFTREPRO_DATA_ROOT"


def test_record_names_the_commit_of_the_code_at_the_start_of_the_run(smoke, monkeypatch) -> None:
    import peftrepro.runs.execute as run_module
    from peftrepro.runs import envinfo

    head = {"commit": "a" * 40}
    monkeypatch.setattr(envinfo.subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(
        argv, 0, stdout=head["commit"] if "rev-parse" in argv else "", stderr=""))
    real_fit = run_module.fit

    def fit_during_a_commit(*args, **kwargs):
        head["commit"] = "b" * 40  # someone commits while the run trains
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(run_module, "fit", fit_during_a_commit)
    envinfo.git_state.cache_clear()
    try:
        record = run_one(smoke("task=mnli", "method=lora"))
    finally:
        envinfo.git_state.cache_clear()
    assert record["env"]["git"] == {"commit": "a" * 40, "dirty": False}


@pytest.mark.parametrize("from_variable", [True, False])
def test_record_names_the_data_root_by_its_variable_not_this_machines_path(smoke, monkeypatch, tmp_path,
                                                                          from_variable) -> None:
    from peftrepro.tasks import write_fixtures

    root = write_fixtures(tmp_path / "data")
    monkeypatch.setenv("PEFTREPRO_DATA_ROOT", str(root) if from_variable else str(tmp_path / "elsewhere"))
    record = run_one(smoke("task=mnli", "method=lora", "use_fixtures=false", f"data_root={root}"))
    named = "$PEFTREPRO_DATA_ROOT" if from_variable else str(root)
    assert record["status"] == "ok"
    assert record["config"]["data_root"] == record["data"]["source"] == named


@pytest.mark.parametrize("from_variable", [True, False])
def test_record_names_the_results_folder_by_its_variable_not_this_machines_path(smoke, monkeypatch, tmp_path,
                                                                               from_variable) -> None:
    results = tmp_path / "results"  # the smoke fixture's results_dir, an absolute path
    monkeypatch.setenv("PEFTREPRO_RESULTS", str(results) if from_variable else str(tmp_path / "elsewhere"))
    record = run_one(smoke("task=mnli", "method=lora"))
    assert record["status"] == "ok"
    assert record["config"]["results_dir"] == ("$PEFTREPRO_RESULTS" if from_variable else str(results))
    assert (results / "runs").is_dir()  # only the record's name for it changed, not where it went


def test_a_data_root_naming_an_unset_variable_is_one_clear_error(smoke, monkeypatch) -> None:
    """A record's config fed back names `$PEFTREPRO_DATA_ROOT`: expanded when set, named when not."""
    monkeypatch.delenv("PEFTREPRO_DATA_ROOT", raising=False)
    with pytest.raises(PeftReproError, match="not set"):
        run_one(smoke("task=mnli", "method=lora", "use_fixtures=false", "data_root=$PEFTREPRO_DATA_ROOT"))
