"""Resumable training (peftrepro.runs.resume): a killed run continues from its last saved state, and ends
with the weights, losses and record of a run that never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftrepro.errors import ConfigError
from peftrepro.methods import apply_method, make_method_config
from peftrepro.models import load_model
from peftrepro.runs import resume
from peftrepro.runs.execute import run_one
from peftrepro.runs.train import fit, make_train_state, seed_everything, total_steps
from tiny_training import TINY_LLAMA, examples, settings

STEPS_PER_EPOCH = 4  # 16 examples in batches of 4; 3 epochs
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


class Killed(Exception):
    """A kill between two saves."""


def start_training(method: str):
    seed_everything(0)
    model, _ = load_model(TINY_LLAMA)
    applied = apply_method(model, make_method_config(method, METHOD_OPTIONS[method]))
    loop = settings(epochs=3, lr=3e-3)
    rows = examples(16)
    state = make_train_state(model, loop, total_steps(len(rows), loop), num_warmup_steps=2)
    return state, applied, rows


def train(method: str, directory: Path, kill_at: int | None = None):
    """Train `method` for 12 steps, saving the state after every step; `kill_at`: stop after that step
    (before its save, so the resumed run redoes it). Returns (stats, model, applied, the step it resumed
    from or None) of the attempt."""
    state, applied, rows = start_training(method)
    fingerprint = resume.Fingerprint.of("tiny", "cpu")
    restored = resume.restore(directory, fingerprint, state, applied)

    def after_step(step: int, total: int) -> None:
        if applied.after_step:
            applied.after_step(step, total)
        if step == kill_at:
            raise Killed

    def save(position) -> None:
        resume.save(directory, fingerprint, state, applied, position, resume.Evaluations(), [])

    stats = fit(state, rows, pad_id=0, seed=0, after_step=after_step, save_position=save, save_every_s=0,
                start=restored.position if restored else None)
    return stats, state.model, applied, restored and restored.position.stats.steps


@pytest.mark.parametrize("kill_at", [6, 9])  # mid-epoch, and the first step of an epoch (its order redrawn)
@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_a_resumed_loop_ends_as_one_that_never_stopped(tmp_path: Path, method: str, kill_at: int) -> None:
    whole, whole_model, whole_applied, _ = train(method, tmp_path / "whole")
    with pytest.raises(Killed):
        train(method, tmp_path / "resumed", kill_at=kill_at)
    assert resume.path_in(tmp_path / "resumed").is_file()
    resumed, resumed_model, resumed_applied, from_step = train(method, tmp_path / "resumed")
    assert from_step == kill_at - 1
    assert resumed.losses == whole.losses and resumed.steps == whole.steps == 3 * STEPS_PER_EPOCH
    assert (resumed.tokens, resumed.epochs) == (whole.tokens, whole.epochs)
    for (name, tensor), (_, other) in zip(whole_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(tensor, other), name
    assert resumed_applied.facts() == whole_applied.facts()  # pruning: mask updates and sparsity reached


def test_a_state_saved_by_other_code_is_set_aside(tmp_path: Path, monkeypatch, caplog) -> None:
    with pytest.raises(Killed):
        train("lora", tmp_path, kill_at=3)
    monkeypatch.setattr(resume, "code_digest", lambda: "other")
    state, applied, _ = start_training("lora")
    with caplog.at_level("WARNING", logger="peftrepro.runs"):
        assert resume.restore(tmp_path, resume.Fingerprint.of("tiny", "cpu"), state, applied) is None
    assert "saved by another code" in caplog.text and not resume.path_in(tmp_path).exists()


def test_a_torn_state_file_is_set_aside(tmp_path: Path, caplog) -> None:
    resume.path_in(tmp_path).write_bytes(b"PK\x03\x04 not a whole file")
    state, applied, _ = start_training("lora")
    with caplog.at_level("WARNING", logger="peftrepro.runs"):
        assert resume.restore(tmp_path, resume.Fingerprint.of("tiny", "cpu"), state, applied) is None
    assert "does not load" in caplog.text and not resume.path_in(tmp_path).exists()


@pytest.mark.parametrize("method", ["lora", "prefix_layer", "magnitude_pruning"])
def test_a_killed_run_resumes_to_the_record_of_a_run_that_never_stopped(smoke, compose_config, tmp_path: Path,
                                                                       method: str) -> None:
    """Smoke: 2 epochs of 4 steps, evaluated after each; killed after the save of step 6, in epoch 2, so
    the resumed run also carries epoch 1's evaluation (and, if best, its predictions and weights)."""
    args = ("task=mnli", f"method={method}", "resume_every_s=0")
    with pytest.raises(KeyboardInterrupt):
        run_one(smoke(*args, "debug.interrupt_after_save=6"))
    (directory,) = (tmp_path / "results" / "runs" / "adhoc").iterdir()
    assert json.loads((directory / "record.json").read_text())["status"] == "interrupted"
    assert resume.path_in(directory).is_file()

    record = run_one(smoke(*args))
    assert record["run_key"] == directory.name and record["status"] == "ok"
    assert [entry["from_step"] for entry in record["training"]["resumed"]] == [6]
    assert not resume.path_in(directory).exists()
    whole = run_one(compose_config("profile=smoke", f"results_dir={tmp_path / 'whole'}", "train.progress=false",
                                   *args))
    assert whole["training"]["resumed"] == []
    for field in ("metrics", "metrics_per_epoch", "best_epoch", "checkpoint_bytes", "weights", "params"):
        assert record[field] == whole[field], field
    same = {k: v for k, v in whole["training"].items() if k != "resumed"}
    assert {k: v for k, v in record["training"].items() if k != "resumed"} == same
    whole_dir = tmp_path / "whole" / "runs" / "adhoc" / whole["run_key"]
    for name in ("adapter.safetensors", "predictions.jsonl.gz"):
        assert (directory / name).read_bytes() == (whole_dir / name).read_bytes(), name


@pytest.mark.parametrize(("override", "message"), [
    ("resume_every_s=-1", "resume_every_s=-1 must be null or a number >= 0"),
    ("resume_every_s=soon", "resume_every_s='soon' must be null or a number >= 0"),
    ("debug.interrupt_after_save=0", "debug.interrupt_after_save=0 must be null or a number >= 1"),
])
def test_bad_resume_options_raise_one_config_error(smoke, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_one(smoke("task=mnli", "method=lora", override))
