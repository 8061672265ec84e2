"""experiments/gpu_session.py and gpu_sweep.py: the pure logic of a session on the lent GPU
(deadlines, what travels back, unpacking without clobbering newer records). The GPU itself is not
needed; the slow test runs the whole driver on CPU with the smoke profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def record(status: str = "ok", created: str = "2026-11-26T10:00:00+00:00", task: str = "mnli",
           total_s: float = 60.0, **extra) -> dict:
    return {"status": status, "created_at": created, "task": task, "timings": {"total_s": total_s}, **extra}


def write_run(results: Path, folder: str, rec: dict, *, weights: bool = False, tmp: bool = False) -> Path:
    directory = results / "runs" / folder
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "predictions.jsonl").write_text('{"prediction": "x"}\n')
    (directory / "method.json").write_text("{}\n")
    if weights:
        (directory / "adapter.safetensors").write_bytes(b"weights")
    if tmp:
        (directory / ".tmp-record.json-123").write_text("half written")
    (directory / "record.json").write_text(json.dumps(rec))
    return directory


# ----------------------------------------------------------------------------- deadlines


def test_a_stage_starts_only_with_the_time_it_needs_and_stops_at_its_cap(gpu_session) -> None:
    stage = gpu_session.Stage(min_s=60, cap_s=200)
    assert gpu_session.stage_window(stage, left_s=59) is None
    assert gpu_session.stage_window(stage, left_s=120) == 120
    assert gpu_session.stage_window(stage, left_s=500) == 200


def test_the_clock_keeps_a_reserve_for_the_last_pack(gpu_session) -> None:
    clock = gpu_session.Clock(budget_s=100, reserve_s=15, start=1000.0)
    assert clock.deadline == 1085.0 and clock.left(now=1080.0) == 5.0


def test_the_gate_estimates_from_finished_runs_of_the_same_task(gpu_sweep) -> None:
    finished = [record(task="mnli", total_s=40), record(task="wikisql", total_s=100),
                record(status="failed", task="mnli", total_s=500)]  # a failed run times nothing
    assert gpu_sweep.run_estimate_s(finished, "mnli", 90) == pytest.approx(40 * gpu_sweep.MARGIN)
    assert gpu_sweep.run_estimate_s(finished[1:2], "mnli", 90) == pytest.approx(100 * gpu_sweep.MARGIN)
    assert gpu_sweep.run_estimate_s([], "mnli", 90) == 90


def test_the_gate_starts_a_run_only_if_it_ends_before_the_deadline(gpu_sweep) -> None:
    assert gpu_sweep.may_start(now=100, deadline=200, estimate_s=100)
    assert not gpu_sweep.may_start(now=101, deadline=200, estimate_s=100)
    assert gpu_sweep.may_start(now=10**9, deadline=None, estimate_s=100)


def test_the_gate_times_only_runs_of_this_session(gpu_sweep, tmp_path: Path) -> None:
    old = write_run(tmp_path, "table_rank/old", record(total_s=999)) / "record.json"
    os.utime(old, (1000, 1000))  # copied from the carried tree with its old mtime
    write_run(tmp_path, "table_rank/new", record(total_s=30))
    found = gpu_sweep.session_records(tmp_path / "runs", since=time.time() - 60)
    assert [r["timings"]["total_s"] for r in found] == [30]


def test_a_stage_over_its_time_is_stopped_with_its_children(gpu_session, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; child = subprocess.Popen(['sleep', '60']); "
              f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)")
    began = time.time()
    # 5 s: time for the child to start on a loaded machine (2 s flaked under a parallel install)
    rc = gpu_session.run_logged([sys.executable, "-c", script], tmp_path / "stage.log", timeout_s=5)
    assert rc is None and time.time() - began < 30
    child = int(pid_file.read_text())
    try:
        state = Path(f"/proc/{child}/stat").read_text().split()[2]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z", "X")  # killed with its parent's process group (a zombie awaits its reaper)


# ----------------------------------------------------------------------------- what travels back


def test_only_runs_the_device_made_travel_back_without_weights(gpu_session, tmp_path: Path) -> None:
    carried, results = tmp_path / "carried", tmp_path / "state"
    same = record(created="2026-11-25T00:00:00+00:00")
    write_run(carried, "table_rank/carried-as-is", same)
    write_run(results, "table_rank/carried-as-is", same, weights=True)
    write_run(carried, "table_rank/was-failed", record(status="failed"))
    write_run(results, "table_rank/was-failed", record(), weights=True, tmp=True)
    write_run(results, "table_weight_type/new", record())
    (results / "bench").mkdir()
    (results / "bench" / "cuda-smollm2-gguf.json").write_text("{}")
    names = [name for _, name in gpu_session.device_made(results, carried)]
    assert "results/runs/table_rank/was-failed/record.json" in names
    assert "results/runs/table_weight_type/new/predictions.jsonl" in names
    assert "results/bench/cuda-smollm2-gguf.json" in names
    assert not [n for n in names if "carried-as-is" in n or n.endswith(".safetensors") or "/.tmp" in n]


def test_the_tarball_round_trips_and_ignores_unsafe_names(gpu_session, tmp_path: Path) -> None:
    results = tmp_path / "state"
    write_run(results, "table_rank/run-a", record(), weights=True)
    members = gpu_session.device_made(results, tmp_path / "nothing-carried")
    tarball = gpu_session.write_tarball(tmp_path / "out" / "gpu-call2.tar.gz", members,
                                        {"gpu_session.json": b'{"call": "call2"}', "../escape": b"x"})
    assert not list((tmp_path / "out").glob(".tmp*"))
    runs, bench, other = gpu_session.read_tarball(tarball)
    assert set(runs) == {"table_rank/run-a"}
    assert set(runs["table_rank/run-a"]) == {"record.json", "predictions.jsonl", "method.json"}
    assert other == {"gpu_session.json": b'{"call": "call2"}'} and bench == {}


def test_wheels_are_pruned_to_one_pinned_version_each(gpu_session, tmp_path: Path) -> None:
    for name in ("omegaconf-2.3.0-py3-none-any.whl", "omegaconf-2.3.1-py3-none-any.whl",
                 "hydra_core-1.3.8-py3-none-any.whl", "datasets-5.2.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    deleted, missing = gpu_session.prune_wheels(tmp_path, {"omegaconf": "2.3.1", "hydra-core": "1.3.8",
                                                           "gguf": "0.19.0"})
    assert sorted(p.name for p in tmp_path.glob("*.whl")) == ["hydra_core-1.3.8-py3-none-any.whl",
                                                              "omegaconf-2.3.1-py3-none-any.whl"]
    assert len(deleted) == 2 and missing == ["gguf==0.19.0"]


# ----------------------------------------------------------------------------- unpacking here

OLD, NEW = "2026-11-26T10:00:00+00:00", "2026-11-26T12:00:00+00:00"


@pytest.mark.parametrize(("local", "incoming", "action"), [
    (None, record(), "install"),
    (record(created=OLD), record(created=OLD), "unchanged"),
    (record(status="failed", created=NEW), record(created=OLD), "install"),  # finished beats failed
    (record(created=OLD), record(status="failed", created=NEW), "keep"),  # never a finished one for a failure
    (record(created=NEW, seed=1), record(created=OLD, seed=2), "keep"),  # never a newer finished one
    (record(created=OLD, seed=1), record(created=NEW, seed=2), "install"),
    (record(status="failed", created=OLD), record(status="failed", created=NEW), "install"),
    (record(), None, "keep"),
    (record(status="unscored", created=OLD), record(created=NEW), "install"),  # scored on the way home
    (record(created=OLD), record(status="unscored", created=NEW), "keep"),  # never unscore a scored run
])
def test_unpack_never_replaces_a_newer_or_finished_record_by_a_lesser_one(gpu_session, local, incoming,
                                                                          action) -> None:
    assert gpu_session.decide(local, incoming)[0] == action


def test_unpack_installs_replaces_and_keeps_run_folders(gpu_session, tmp_path: Path) -> None:
    local = tmp_path / "results"
    write_run(local, "table_rank/newer-here", record(created=NEW, seed=1))
    write_run(local, "table_rank/failed-here", record(status="failed", created=NEW), weights=True)
    incoming = {
        "table_rank/newer-here": {"record.json": json.dumps(record(created=OLD, seed=2)).encode()},
        "table_rank/failed-here": {"record.json": json.dumps(record(created=OLD)).encode(),
                                   "predictions.jsonl": b'{"prediction": "gpu"}\n'},
        "table_weight_type/new": {"record.json": json.dumps(record()).encode(), "method.json": b"{}"},
    }
    report = {line["run"]: line["action"] for line in gpu_session.unpack_runs(incoming, local)}
    assert report == {"table_rank/newer-here": "keep", "table_rank/failed-here": "install",
                      "table_weight_type/new": "install"}
    kept = json.loads((local / "runs/table_rank/newer-here/record.json").read_text())
    assert kept["seed"] == 1
    replaced = local / "runs/table_rank/failed-here"
    assert json.loads((replaced / "record.json").read_text())["status"] == "ok"
    assert (replaced / "predictions.jsonl").read_text() == '{"prediction": "gpu"}\n'
    assert not (replaced / "adapter.safetensors").exists()  # weights of the replaced record are not the new run's
    assert (local / "runs/table_weight_type/new/method.json").is_file()
    again = gpu_session.unpack_runs(incoming, local)
    assert {line["action"] for line in again} == {"keep", "unchanged"}


# ----------------------------------------------------------------------------- the sweep is make's sweep


def test_the_sweep_composes_the_runs_make_composes(gpu_session, tmp_path: Path) -> None:
    """Same overrides as `make table-rank PROFILE=mini SEEDS=0,1`, plus settings outside the run key."""
    from hydra import compose, initialize_config_dir

    from peftrepro import records
    from peftrepro.run import CONFIG_DIR, resolved_config

    session = gpu_session.Session(call="call2", profile="mini", device="cpu", state=tmp_path, out=tmp_path,
                                  carried=tmp_path, clock=gpu_session.Clock(60, 0), jobs=6, seeds="0,1",
                                  experiments=("table_rank",), latency_trials=30, run_estimate_s=90)
    argv = gpu_session.sweep_argv(session, "table_rank")
    assert argv[1:5] == ["experiments/gpu_sweep.py", "-m", "experiment=table_rank", "profile=mini"]
    assert "seed=0,1" in argv and "hydra/launcher=joblib" in argv and "hydra.launcher.n_jobs=6" in argv
    one_job = ["experiment=table_rank", "profile=mini", "seed=1", "task=mnli", "method.weights=[W_q]", "method.r=4"]
    extra = [a for a in argv if a.startswith(("train.", "device=", "scoring="))]
    assert extra == ["train.progress=false", "scoring=auto", "device=cpu"]

    def key(overrides: list[str]) -> str:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return records.run_key(resolved_config(compose(config_name="config", overrides=overrides)))

    assert key(one_job + extra) == key(one_job)


# ----------------------------------------------------------------------------- end to end (CPU)


@pytest.mark.slow
def test_the_driver_runs_a_session_on_cpu_and_unpack_aggregates_it(tmp_path: Path) -> None:
    """`device` with the smoke profile (tiny random model, fixture data) and a budget too short for
    every run: it stops cleanly, packs what finished, and `unpack` installs it and builds the table."""
    script = Path(__file__).resolve().parents[2] / "experiments" / "gpu_session.py"
    out = tmp_path / "out"
    device = subprocess.run([sys.executable, str(script), "device", "--stages", "model,bench-gpt2,sweep",
                             "--profile", "smoke", "--device", "cpu", "--jobs", "1", "--seeds", "0",
                             "--experiments", "table_weight_type", "--budget-s", "45", "--reserve-s", "5",
                             "--state", str(tmp_path / "state"), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert device.returncode == 0, device.stdout[-3000:] + device.stderr[-3000:]
    summary = json.loads((out / "gpu-custom.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["ok", "ok", "ok"]
    assert summary["elapsed_s"] <= 45
    made = summary["runs_made"].get("table_weight_type:ok", 0)
    assert 0 < made
    assert not list((tmp_path / "state" / "results" / "runs").glob("*/*/.tmp-run-*"))  # no run cut halfway
    unpack = subprocess.run([sys.executable, str(script), "unpack", str(out / "gpu-custom.tar.gz"),
                             "--results", str(tmp_path / "home"), "--no-report"],
                            capture_output=True, text=True, timeout=300)
    assert (tmp_path / "home" / "tables" / "table_weight_type.md").is_file(), unpack.stdout + unpack.stderr
    assert len(list((tmp_path / "home" / "runs" / "table_weight_type").glob("*/record.json"))) == made
    assert (tmp_path / "home" / "bench" / "cpu-tiny-gpt2.json").is_file()


@pytest.mark.slow
def test_unpack_scores_the_e2e_runs_the_device_decoded_without_java(gpu_session, tmp_path: Path) -> None:
    """An E2E run as the device makes it (scoring deferred: no Java there) comes home unscored;
    `unpack` scores its saved predictions here and the table shows the scores."""
    import shutil

    if shutil.which("java") is None:
        pytest.skip("scoring as the official scorer does needs Java")
    device = tmp_path / "device"
    made = subprocess.run([sys.executable, "-m", "peftrepro.run", "profile=smoke", "task=e2e",
                           "+experiment/e2e_arm=lora", "train.eval_every_epoch=false", "scoring=later",
                           "train.progress=false", f"results_dir={device}"],
                          env={**os.environ, "PEFTREPRO_EXPERIMENT": "table_e2e"}, capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    info = {"profile": "smoke", "sweep": {"experiments": ["table_e2e"], "seeds": "0"}}
    tarball = gpu_session.write_tarball(tmp_path / "gpu-call2.tar.gz", gpu_session.device_made(device, tmp_path / "none"),
                                        {"gpu_session.json": json.dumps(info).encode()})
    home = tmp_path / "home"
    unpack = subprocess.run([sys.executable, str(Path(gpu_session.__file__)), "unpack", str(tarball), "--results",
                             str(home), "--no-report"], capture_output=True, text=True, timeout=300)
    assert "scored 1 of 1" in unpack.stdout, unpack.stdout[-3000:] + unpack.stderr[-3000:]
    [record_file] = (home / "runs" / "table_e2e").glob("*/record.json")
    scored = json.loads(record_file.read_text())
    assert scored["status"] == "ok" and scored["metrics"]["meteor"] is not None and scored["scoring"]["scored_at"]
    assert "UNSCORED" not in (home / "tables" / "table_e2e.md").read_text()
