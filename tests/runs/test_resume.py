"""Resumable training (peftrepro.runs.resume): a killed run continues from its last saved state, and ends
with the weights, losses and record of a run that never stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftrepro.errors import ConfigError
from peftrepro.methods import apply_method, make_method_config
from peftrepro.models import load_model
from peftrepro.runs import cli, resume
from peftrepro.runs.execute import run_one
from peftrepro.runs.train import fit, make_train_state, request_stop, seed_everything, total_steps
from tiny_training import TINY_LLAMA, examples, settings

STEPS = 12  # 16 examples in batches of 4: 4 steps an epoch, 3 epochs
# each with what a resumption must restore beyond the trained tensors (the prefix methods need a task's
# encoding: the run-level test below covers them)
METHOD_OPTIONS = {
    "lora": {"dropout": 0.1},  # dropout: the torch RNG
    "adapter_h": {},
    "ft_top": {},
    "ft": {},
    "magnitude_pruning": {"remaining": 0.5, "update_every": 2},  # masks (buffers) and the schedule's state
    "movement_pruning": {"remaining": 0.5, "update_every": 2},  # besides: the movement scores (buffers)
}
FINGERPRINT = resume.Fingerprint.of("tiny", "cpu", "data")


class Killed(Exception):
    """A kill."""


def start_training(method: str, **loop_changes):
    seed_everything(0)
    model, _ = load_model(TINY_LLAMA)
    applied = apply_method(model, make_method_config(method, METHOD_OPTIONS[method]))
    loop = settings(epochs=3, lr=3e-3, log_every=3, **loop_changes)  # log_every 3: a loss sum pending at saves
    rows = examples(16)
    state = make_train_state(model, loop, total_steps(len(rows), loop), num_warmup_steps=2)
    return state, applied, rows


def train(method: str, directory: Path, kill_before_save: int | None = None, kill_after_save: int | None = None,
          sigterm_at: int | None = None, save_every_s: float | None = 0, **loop_changes):
    """Train `method`, saving the state after every step (`save_every_s`); stop as killed after that step,
    before its save (the resumed run redoes the step) or after it, or send the CLI's SIGTERM handler
    in a step. Returns (stats, model, applied, how it was resumed)."""
    state, applied, rows = start_training(method, **loop_changes)
    restored = resume.restore(directory, FINGERPRINT, state, applied)

    def after_step(step: int, total: int, rate_scale: float) -> None:
        if applied.after_step:
            applied.after_step(step, total, rate_scale)
        if step == kill_before_save:
            raise Killed
        if step == sigterm_at:
            cli._interrupt(signal.SIGTERM, None)  # the training goes on to the end of this step

    def save(position) -> None:
        resume.save(directory, FINGERPRINT, state, applied, position, resume.Evaluations(),
                    restored.resumptions if restored else [])
        if position.stats.steps == kill_after_save:
            raise Killed

    stats = fit(state, rows, pad_id=0, seed=0, after_step=after_step, save_position=save, save_every_s=save_every_s,
                start=restored.position if restored else None)
    return stats, state.model, applied, restored


def assert_same_training(a, b) -> None:
    (stats, model, applied, _), (other_stats, other_model, other_applied, _) = a, b
    assert other_stats.losses == stats.losses and other_stats.steps == stats.steps
    assert (other_stats.tokens, other_stats.epochs) == (stats.tokens, stats.epochs)
    weights, other_weights = model.state_dict(), other_model.state_dict()
    assert list(weights) == list(other_weights)
    for name, tensor in weights.items():
        assert torch.equal(tensor, other_weights[name]), name
    # the state dict leaves out non-persistent buffers: movement's scores and their Adam moments
    buffers, other_buffers = dict(model.named_buffers()), dict(other_model.named_buffers())
    assert list(buffers) == list(other_buffers)
    for name, tensor in buffers.items():
        assert torch.equal(tensor, other_buffers[name]), name
    assert other_applied.facts() == applied.facts()  # pruning: mask updates and sparsity reached


@pytest.mark.parametrize("kill", [
    {"kill_before_save": 6},  # mid-epoch, between two saves: step 6 is trained again
    {"kill_before_save": 9},  # the first step of an epoch: its order is drawn again
    {"kill_after_save": 8},  # right after an epoch's last step
    {"kill_after_save": STEPS},  # after the last step's save, before the run's end
])
@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_a_resumed_loop_ends_as_one_that_never_stopped(tmp_path: Path, method: str, kill: dict) -> None:
    whole = train(method, tmp_path / "whole")
    with pytest.raises(Killed):
        train(method, tmp_path / "resumed", **kill)
    assert resume.path_in(tmp_path / "resumed").is_file()
    resumed = train(method, tmp_path / "resumed")
    saved_at = kill.get("kill_after_save") or kill["kill_before_save"] - 1
    assert [entry["from_step"] for entry in resumed[3].resumptions] == [saved_at]
    assert resumed[0].steps == STEPS
    assert_same_training(whole, resumed)


def test_a_saved_state_leaves_out_only_the_buffers_zero_at_every_step_end(tmp_path: Path) -> None:
    with pytest.raises(Killed):
        train("movement_pruning", tmp_path, kill_after_save=5)
    saved = set(torch.load(resume.path_in(tmp_path), weights_only=True)["buffers"])
    state, applied, _ = start_training("movement_pruning")
    left_out = set(dict(state.model.named_buffers())) - saved
    assert left_out and {name.rpartition(".")[2] for name in left_out} == {"score_grad"}
    assert any(name.endswith("score_exp_avg_sq") for name in saved)  # the moments are kept


@pytest.mark.parametrize("loop", [{"grad_accum": 2}, {"max_steps": 7}])  # 2 batches a step; ends mid-epoch 2
def test_accumulation_and_a_step_budget_resume_exactly(tmp_path: Path, loop: dict) -> None:
    whole = train("lora", tmp_path / "whole", **loop)
    with pytest.raises(Killed):
        train("lora", tmp_path / "resumed", kill_before_save=3, **loop)
    assert_same_training(whole, train("lora", tmp_path / "resumed", **loop))


def test_a_run_killed_twice_lists_both_resumptions(tmp_path: Path) -> None:
    whole = train("lora", tmp_path / "whole")
    with pytest.raises(Killed):
        train("lora", tmp_path / "resumed", kill_after_save=3)
    with pytest.raises(Killed):
        train("lora", tmp_path / "resumed", kill_after_save=10)
    resumed = train("lora", tmp_path / "resumed")
    assert [entry["from_step"] for entry in resumed[3].resumptions] == [3, 10]
    assert_same_training(whole, resumed)


def test_sigterm_while_training_saves_at_the_end_of_the_step_and_stops(tmp_path: Path) -> None:
    """A cancelled or timed-out job (SIGTERM) loses no trained step, whenever the last periodic save was."""
    whole = train("lora", tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        train("lora", tmp_path / "resumed", sigterm_at=5, save_every_s=None)  # no periodic saves
    resumed = train("lora", tmp_path / "resumed")
    assert [entry["from_step"] for entry in resumed[3].resumptions] == [5]
    assert_same_training(whole, resumed)


def test_sigterm_outside_training_or_twice_stops_at_once() -> None:
    with pytest.raises(KeyboardInterrupt):
        cli._interrupt(signal.SIGTERM, None)  # no training runs: nothing to wait for
    assert request_stop() is False


@pytest.mark.parametrize(("other", "named"), [
    ({"code": "other"}, "code"),
    ({"data": "other"}, "data"),  # another data_root or tokenizer: not in the run key
    ({"device": "cuda:H200", "torch": "0"}, "torch and device"),
    ({"bitsandbytes": "0.0.1"}, "bitsandbytes"),  # QLoRA's 4-bit numerics
])
def test_a_state_saved_otherwise_is_set_aside(tmp_path: Path, caplog, other: dict, named: str) -> None:
    with pytest.raises(Killed):
        train("lora", tmp_path, kill_after_save=3)
    state, applied, _ = start_training("lora")
    before = {name: tensor.clone() for name, tensor in state.model.state_dict().items()}
    fingerprint = resume.Fingerprint(**{**FINGERPRINT.__dict__, **other})
    with caplog.at_level("WARNING", logger="peftrepro.runs"):
        assert resume.restore(tmp_path, fingerprint, state, applied) is None
    assert f"saved by another {named}" in caplog.text
    assert not resume.path_in(tmp_path).exists() and (tmp_path / resume.SET_ASIDE_FILE).is_file()
    assert all(torch.equal(tensor, before[name]) for name, tensor in state.model.state_dict().items())


def test_a_state_of_other_tensors_is_set_aside_before_anything_loads(tmp_path: Path, caplog) -> None:
    with pytest.raises(Killed):
        train("lora", tmp_path, kill_after_save=3)
    state, applied, _ = start_training("adapter_h")  # same fingerprint, other trainable tensors
    before = {name: tensor.clone() for name, tensor in state.model.state_dict().items()}
    with caplog.at_level("WARNING", logger="peftrepro.runs"):
        assert resume.restore(tmp_path, FINGERPRINT, state, applied) is None
    assert "trainable tensors are named otherwise" in caplog.text
    assert all(torch.equal(tensor, before[name]) for name, tensor in state.model.state_dict().items())


def test_a_torn_state_file_is_set_aside(tmp_path: Path, caplog) -> None:
    resume.path_in(tmp_path).write_bytes(b"PK\x03\x04 not a whole file")
    state, applied, _ = start_training("lora")
    with caplog.at_level("WARNING", logger="peftrepro.runs"):
        assert resume.restore(tmp_path, FINGERPRINT, state, applied) is None
    assert "does not load" in caplog.text and not resume.path_in(tmp_path).exists()


def run_dir(results: Path) -> Path:
    (directory,) = (results / "runs" / "adhoc").iterdir()
    return directory


@pytest.mark.parametrize("kill_after_save", [8, STEPS])  # an epoch's last step; the last step
def test_the_state_before_each_evaluation_is_saved_whatever_the_period(tmp_path: Path, kill_after_save: int) -> None:
    """A SIGTERM does not wait for an evaluation: a job stopped in one resumes at the step before it."""
    whole = train("lora", tmp_path / "whole")
    with pytest.raises(Killed):
        train("lora", tmp_path / "resumed", kill_after_save=kill_after_save, save_every_s=1e9)  # no periodic save
    resumed = train("lora", tmp_path / "resumed")
    assert [entry["from_step"] for entry in resumed[3].resumptions] == [kill_after_save]
    assert_same_training(whole, resumed)


@pytest.mark.parametrize(("method", "kill_after_save"), [
    ("lora", 6),  # in epoch 2: the resumed run carries epoch 1's evaluation (and, if best, its weights)
    ("lora", 8),  # the last step: only the last evaluation and the record are left
    ("prefix_layer", 6),
    ("magnitude_pruning", 6),
])
def test_a_killed_run_resumes_to_the_record_of_a_run_that_never_stopped(smoke, compose_config, tmp_path: Path,
                                                                       method: str, kill_after_save: int) -> None:
    """Smoke: 2 epochs of 4 steps, evaluated after each."""
    args = ("task=mnli", f"method={method}", "resume_every_s=0")
    with pytest.raises(KeyboardInterrupt):
        run_one(smoke(*args, f"debug.interrupt_after_save={kill_after_save}"))
    directory = run_dir(tmp_path / "results")
    assert json.loads((directory / "record.json").read_text())["status"] == "interrupted"
    assert resume.path_in(directory).is_file()

    record = run_one(smoke(*args))
    assert record["run_key"] == directory.name and record["status"] == "ok"
    assert [entry["from_step"] for entry in record["training"]["resumed"]] == [kill_after_save]
    assert not resume.path_in(directory).exists()
    whole = run_one(compose_config("profile=smoke", f"results_dir={tmp_path / 'whole'}", "train.progress=false",
                                   *args))
    assert whole["training"]["resumed"] == []
    for field in ("metrics", "metrics_per_epoch", "best_epoch", "checkpoint_bytes", "weights", "params"):
        assert record[field] == whole[field], field
    same = {k: v for k, v in whole["training"].items() if k != "resumed"}
    assert {k: v for k, v in record["training"].items() if k != "resumed"} == same
    for name in ("adapter.safetensors", "predictions.jsonl.gz"):
        assert (directory / name).read_bytes() == (run_dir(tmp_path / "whole") / name).read_bytes(), name


def test_a_forced_rerun_starts_afresh(smoke, tmp_path: Path) -> None:
    args = ("task=mnli", "method=lora", "resume_every_s=0")
    with pytest.raises(KeyboardInterrupt):
        run_one(smoke(*args, "debug.interrupt_after_save=3"))
    record = run_one(smoke(*args, "force=true"))
    assert record["status"] == "ok" and record["training"]["resumed"] == []
    assert not resume.path_in(run_dir(tmp_path / "results")).exists()


@pytest.mark.parametrize(("override", "message"), [
    ("resume_every_s=-1", "resume_every_s=-1 must be null or a number >= 0"),
    ("resume_every_s=soon", "resume_every_s='soon' must be null or a number >= 0"),
    ("debug.interrupt_after_save=0", "debug.interrupt_after_save=0 must be null or an integer >= 1"),
    ("debug.interrupt_after_save=6.5", "debug.interrupt_after_save=6.5 must be null or an integer >= 1"),
])
def test_bad_resume_options_raise_one_config_error(smoke, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_one(smoke("task=mnli", "method=lora", override))


def test_the_code_digest_covers_every_module_a_run_loads() -> None:
    """The digest leaves out the report side; a run, with every method and task registered, must not
    load any module it leaves out (or an edit there would go unnoticed by a saved state)."""
    script = ("import sys, peftrepro.runs.cli, peftrepro.runs.lr_search, peftrepro.runs.export, "
              "peftrepro.methods.registry, peftrepro.tasks\n"
              "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('peftrepro') and m.__file__))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    covered = {str(path) for path in resume.run_side_sources()}
    assert loaded and set(loaded) <= covered
    assert not any("/report/" in path for path in covered)
