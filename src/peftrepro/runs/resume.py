"""Resumable training: a run saves its training state beside its record every few minutes
(`resume_every_s`), so a run that is killed (a job's time limit, SIGKILL, a lost machine) continues from
its last save when the same command runs again, instead of training from the start.

`<run dir>/.resume.pt` (gitignored; one file, replaced atomically) holds, at a step boundary:
  - the model's trainable tensors and every buffer (pruning's masks and movement scores are buffers) but
    those a method declares zero at every step's end (`AppliedMethod.step_buffers`);
  - the optimizer's and the learning-rate schedule's states, and a scheduled method's own state
    (`AppliedMethod.schedule_state`: pruning's sparsity reached);
  - the loop's position (`train.LoopPosition`) and the RNG states (torch CPU and CUDA, Python, NumPy),
    so the continued run draws the batches and dropout masks of a run that never stopped: on CPU its
    weights and losses are equal to the last bit (tests/runs/test_resume.py);
  - the evaluations made so far (`train.eval_every_epoch`): their rows, and the best epoch's
    predictions and weights;
  - what the state is valid for (`Fingerprint`): the run key, this package's code, the torch,
    transformers and bitsandbytes versions, the device, and the training data and schedule as
    encoded (data_root is not in the run key). A state another code, device or data made is set aside (renamed
    `.resume-set-aside.pt`) with a warning and the run trains from the start: one run is computed by
    one code on one device.
The file goes once the record is written, and before a `force=true` rerun. The record lists each
resumption in `training.resumed` (the step it continued from, the training time before it):
`timings.train_s` sums the training time of every attempt; load, evaluation, total time and memory
are the last attempt's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import random
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import transformers

import peftrepro
from peftrepro.runs import records
from peftrepro.runs.envinfo import package_versions
from peftrepro.runs.train import LoopPosition, TrainState, TrainStats

log = logging.getLogger("peftrepro.runs")

RESUME_FILE = ".resume.pt"
SET_ASIDE_FILE = ".resume-set-aside.pt"  # the last state that could not continue its run, kept to inspect
# what a torn, truncated or foreign file raises on loading (an OSError or MemoryError is not the file's fault)
UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, TypeError, ValueError, AttributeError)


@dataclass(frozen=True)
class Fingerprint:
    """What a saved training state is valid for: the same run, code, library versions, device and data."""

    run_key: str
    code: str
    torch: str
    transformers: str
    device: str
    data: str  # the encoded training examples and the number of steps (`data_digest`)
    # QLoRA's 4-bit forward pass is bitsandbytes code ("" in a state saved before it was checked)
    bitsandbytes: str = ""

    @classmethod
    def of(cls, run_key: str, device: str, data: str = "") -> Fingerprint:
        return cls(run_key, code_digest(), str(torch.__version__), transformers.__version__, device, data,
                   package_versions().get("bitsandbytes", "not installed"))


def data_digest(examples: Sequence[Any], num_steps: int, num_warmup_steps: int) -> str:
    """A hash of the encoded training examples (ids and labels) and the schedule's length: a state saved
    over other data (another data_root, another tokenizer) or another schedule is not continued."""
    digest = hashlib.sha256(f"{num_steps}/{num_warmup_steps}/{len(examples)}".encode())
    for example in examples:
        digest.update(repr((example.input_ids, example.labels)).encode())
    return digest.hexdigest()[:16]


# Modules a run cannot import (the layers contract in pyproject.toml puts them above the run side): an
# edit to the report leaves a saved training state valid.
NOT_RUN_SIDE = ("peftrepro.report", "peftrepro.cli")


def run_side_sources() -> list[Path]:
    """The package's Python sources that a run can execute, in a stable order."""
    root = Path(peftrepro.__file__).parent

    def outside(path: Path) -> bool:
        module = ".".join(("peftrepro", *path.relative_to(root).with_suffix("").parts))
        return any(module == name or module.startswith(name + ".") for name in NOT_RUN_SIDE)

    return [path for path in sorted(root.rglob("*.py")) if not outside(path)]


@lru_cache(maxsize=1)
def code_digest() -> str:
    """A hash of the run side's Python sources: a state saved by other code is not continued. Read when
    a run starts (`run_one`), so an edit made while it trains is not credited with its state."""
    root = Path(peftrepro.__file__).parent
    digest = hashlib.sha256()
    for path in run_side_sources():
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass
class Evaluations:
    """The evaluations of a run so far (one per epoch with `train.eval_every_epoch`), and the best one's
    predictions and adapter files: what a resumed run needs to still report the best epoch."""

    per_epoch: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)  # JSON-ready: row, output fields, bytes, facts, weights
    adapter_files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Resumed:
    """A saved state restored into the model, optimizer and schedule: where `fit` continues from."""

    position: LoopPosition
    evaluations: Evaluations
    resumptions: list[dict[str, Any]]  # every resumption of this run, this one last


def path_in(directory: Path) -> Path:
    return directory / RESUME_FILE


def save(directory: Path, fingerprint: Fingerprint, state: TrainState, applied: Any, position: LoopPosition,
         evaluations: Evaluations, resumptions: list[dict[str, Any]]) -> None:
    """Write the training state at `position` (atomic: a kill while writing keeps the last save)."""
    model = state.model
    payload = {
        "fingerprint": asdict(fingerprint),
        "parameters": {name: p.detach() for name, p in model.named_parameters() if p.requires_grad},
        "buffers": {name: b.detach() for name, b in saved_buffers(model, applied).items()},
        "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
        "schedule": applied.schedule_state() if applied.schedule_state else None,
        "step": state.step,
        "position": asdict(position),
        # the run's own GPU's generator only: a rerun may hold another GPU of the same model
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(state.device) if state.device.type == "cuda" else None,
                "python": random.getstate(), "numpy": _numpy_state()},
        "evaluations": json.dumps({"per_epoch": evaluations.per_epoch, "best": evaluations.best},
                                  default=records.json_default),
        "adapter_files": evaluations.adapter_files,
        "resumptions": resumptions,
    }
    records.atomic_write(path_in(directory), lambda handle: torch.save(payload, handle))


def can_resume(applied: Any) -> bool:
    """A method whose schedule keeps state outside the model's tensors resumes only if it can save it."""
    return not applied.config.scheduled or applied.restore_schedule is not None


def restore(directory: Path, fingerprint: Fingerprint, state: TrainState, applied: Any) -> Resumed | None:
    """Load the saved state of this run into `state` (model, optimizer, schedule, RNGs) and return where
    training continues; None (training starts over) when there is none or it cannot stand for this run."""
    path = path_in(directory)
    if not path.is_file() or not can_resume(applied):
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        saved = Fingerprint(**payload["fingerprint"])
    except UNREADABLE as error:
        problem = f"it does not load ({type(error).__name__}: {error})"
    else:
        changed = [name for name, value in asdict(saved).items() if value != getattr(fingerprint, name)]
        # checked before anything changes: a refused state leaves the model as it was built
        problem = f"it was saved by another {' and '.join(changed)}" if changed else _mismatch(state, applied, payload)
    if problem:
        _set_aside(path, problem)
        return None
    _load_tensors(state.model, payload)
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.step = int(payload["step"])
    if applied.restore_schedule:
        applied.restore_schedule(payload["schedule"])
    _restore_rng(payload["rng"], state.device)
    saved_position = payload["position"]
    stats = TrainStats(**{**saved_position["stats"], "losses": [tuple(p) for p in saved_position["stats"]["losses"]]})
    position = LoopPosition(**{**saved_position, "stats": stats,
                               "epoch_rng_state": _as_tuple(saved_position["epoch_rng_state"])})
    evaluations = Evaluations(**json.loads(payload["evaluations"]), adapter_files=dict(payload["adapter_files"]))
    resumptions = [*payload["resumptions"], {"from_step": position.stats.steps,
                                             "train_s_before": round(position.stats.seconds, 3)}]
    log.info("resume %s from step %d (training state saved at %s)", fingerprint.run_key, position.stats.steps, path)
    return Resumed(position, evaluations, resumptions)


def discard(directory: Path) -> None:
    path_in(directory).unlink(missing_ok=True)


def _set_aside(path: Path, why: str) -> None:
    """Keep the refused state under SET_ASIDE_FILE (the last one only), out of the way of the next save."""
    log.warning("training starts over: the saved training state %s cannot continue this run: %s (kept as %s)",
                path, why, SET_ASIDE_FILE)
    path.replace(path.with_name(SET_ASIDE_FILE))


def saved_buffers(model: torch.nn.Module, applied: Any) -> dict[str, torch.Tensor]:
    """The buffers a training state holds: all but the method's `step_buffers` (zero at every save, as a
    save follows an optimizer step; a restored run starts them at zero as built)."""
    return {name: buffer for name, buffer in model.named_buffers()
            if name.rpartition(".")[2] not in applied.step_buffers}


def _mismatch(state: TrainState, applied: Any, payload: Mapping[str, Any]) -> str | None:
    """Why the saved tensors cannot load into this model and optimizer (names, shapes, groups); None if they can."""
    parameters = {name: p for name, p in state.model.named_parameters() if p.requires_grad}
    buffers = saved_buffers(state.model, applied)
    for kind, ours, theirs in (("trainable tensors", parameters, payload["parameters"]),
                               ("buffers", buffers, payload["buffers"])):
        if set(ours) != set(theirs):
            return f"its {kind} are named otherwise ({sorted(set(ours) ^ set(theirs))[:3]} ...)"
        if shapes := [name for name in ours if tuple(ours[name].shape) != tuple(theirs[name].shape)]:
            return f"its {kind} have other shapes ({shapes[:3]})"
    groups = [len(group["params"]) for group in payload["optimizer"]["param_groups"]]
    if groups != [len(group["params"]) for group in state.optimizer.param_groups]:
        return "its optimizer holds other parameter groups"
    return None


def _load_tensors(model: torch.nn.Module, payload: Mapping[str, Any]) -> None:
    parameters, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    with torch.no_grad():
        for name, tensor in payload["parameters"].items():
            parameters[name].copy_(tensor)
        for name, tensor in payload["buffers"].items():
            buffers[name].copy_(tensor)


def _numpy_state() -> list[Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    return [kind, keys.tolist(), position, has_gauss, cached]


def _restore_rng(saved: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] is not None:
        torch.cuda.set_rng_state(saved["cuda"], device)
    random.setstate(_as_tuple(saved["python"]))
    kind, keys, position, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def _as_tuple(value: Any) -> Any:
    """Python RNG states are nested tuples; a saved copy may come back with lists."""
    return tuple(_as_tuple(item) for item in value) if isinstance(value, (list, tuple)) else value
