"""Resumable training: a run saves its training state beside its record every few minutes
(`resume_every_s`), so a run that is killed (a job's time limit, SIGKILL, a lost machine) continues from
its last save when the same command runs again, instead of training from the start.

`<run dir>/.resume.pt` (gitignored; one file, replaced atomically) holds, at a step boundary:
  - the model's trainable tensors and every buffer (pruning's masks and movement scores are buffers);
  - the optimizer's and the learning-rate schedule's states, and a scheduled method's own state
    (`AppliedMethod.schedule_state`: pruning's sparsity reached);
  - the loop's position (`train.LoopPosition`) and the RNG states (torch CPU and CUDA, Python, NumPy),
    so the continued run draws the batches and dropout masks of a run that never stopped: on CPU its
    weights and losses are equal to the last bit (tests/runs/test_resume.py);
  - the evaluations made so far (`train.eval_every_epoch`): their rows, and the best epoch's
    predictions and weights;
  - what the state is valid for (`Fingerprint`): the run key, this package's code, the torch and
    transformers versions, the device. A file another code or device made is set aside with a
    warning and the run trains from the start: one run is computed by one code on one device.
The file goes once the record is written. The record lists each resumption in `training.resumed`;
`timings.train_s` sums the training time of every attempt.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import transformers

import peftrepro
from peftrepro.runs import records
from peftrepro.runs.train import LoopPosition, TrainState, TrainStats

log = logging.getLogger("peftrepro.runs")

RESUME_FILE = ".resume.pt"


@dataclass(frozen=True)
class Fingerprint:
    """What a saved training state is valid for: the same run, code, library versions and device."""

    run_key: str
    code: str
    torch: str
    transformers: str
    device: str

    @classmethod
    def of(cls, run_key: str, device: str) -> Fingerprint:
        return cls(run_key, code_digest(), str(torch.__version__), transformers.__version__, device)


@lru_cache(maxsize=1)
def code_digest() -> str:
    """A hash of this package's Python sources: a state saved by other code is not continued."""
    root = Path(peftrepro.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
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
    resumed: list[dict[str, Any]]  # every resumption of this run, this one last


def path_in(directory: Path) -> Path:
    return directory / RESUME_FILE


def save(directory: Path, fingerprint: Fingerprint, state: TrainState, applied: Any, position: LoopPosition,
         evaluations: Evaluations, resumed: list[dict[str, Any]]) -> None:
    """Write the training state at `position` (atomic: a kill while writing keeps the last save)."""
    model = state.model
    payload = {
        "fingerprint": asdict(fingerprint),
        "parameters": {name: p.detach() for name, p in model.named_parameters() if p.requires_grad},
        "buffers": {name: b.detach() for name, b in model.named_buffers()},
        "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
        "schedule": applied.schedule_state() if applied.schedule_state else None,
        "step": state.step,
        "position": {**asdict(position), "stats": asdict(position.stats)},
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": random.getstate(), "numpy": _numpy_state()},
        "evaluations": json.dumps({"per_epoch": evaluations.per_epoch, "best": evaluations.best},
                                  default=records.json_default),
        "adapter_files": evaluations.adapter_files,
        "resumed": resumed,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    records.atomic_write_bytes(path_in(directory), buffer.getvalue())


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
        payload = torch.load(path, map_location=state.device, weights_only=True)
        saved = Fingerprint(**payload["fingerprint"])
    except Exception as error:  # a torn or foreign file: the run trains from the start
        return _set_aside(path, f"it does not load ({type(error).__name__}: {error})")
    if saved != fingerprint:
        changed = [name for name, value in asdict(saved).items() if value != getattr(fingerprint, name)]
        return _set_aside(path, f"it was saved by another {' and '.join(changed)}")
    _load_tensors(state.model, payload)
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.step = int(payload["step"])
    if applied.restore_schedule:
        applied.restore_schedule(payload["schedule"])
    _restore_rng(payload["rng"])
    position = payload["position"]
    stats = position.pop("stats")
    stats["losses"] = [tuple(point) for point in stats["losses"]]
    position = LoopPosition(stats=TrainStats(**stats), **{**position, "epoch_order": _as_tuple(position["epoch_order"])})
    evaluations = Evaluations(**json.loads(payload["evaluations"]), adapter_files=dict(payload["adapter_files"]))
    resumed = [*payload["resumed"], {"from_step": position.stats.steps,
                                     "train_s_before": round(position.stats.seconds, 3)}]
    log.info("resume %s from step %d (training state saved at %s)", fingerprint.run_key, position.stats.steps, path)
    return Resumed(position, evaluations, resumed)


def discard(directory: Path) -> None:
    path_in(directory).unlink(missing_ok=True)


def _set_aside(path: Path, why: str) -> None:
    log.warning("training starts over: the saved training state %s cannot continue this run: %s", path, why)
    path.unlink(missing_ok=True)
    return None


def _load_tensors(model: torch.nn.Module, payload: Mapping[str, Any]) -> None:
    parameters = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    trainable = {name for name, p in parameters.items() if p.requires_grad}
    if set(payload["parameters"]) != trainable or set(payload["buffers"]) != set(buffers):
        raise RuntimeError("the saved training state names other tensors than this model has")  # same code: a bug
    with torch.no_grad():
        for name, tensor in payload["parameters"].items():
            parameters[name].copy_(tensor)
        for name, tensor in payload["buffers"].items():
            buffers[name].copy_(tensor)


def _numpy_state() -> list[Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    return [kind, keys.tolist(), position, has_gauss, cached]


def _restore_rng(saved: Mapping[str, Any]) -> None:
    torch.set_rng_state(saved["torch"].cpu())
    if saved["cuda"]:
        torch.cuda.set_rng_state_all([state.cpu() for state in saved["cuda"]])
    random.setstate(_as_tuple(saved["python"]))
    kind, keys, position, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def _as_tuple(value: Any) -> Any:
    """Python RNG states are nested tuples; a saved copy may come back with lists."""
    return tuple(_as_tuple(item) for item in value) if isinstance(value, (list, tuple)) else value
