"""Reusing a finished run of another experiment instead of training the same thing twice.

Tables 5 and 6 share three LoRA settings (W_q r=8; W_q,W_v r=4; all four at r=2), written
differently in their experiment files (`ranks: {W_q: 8}` vs `weights: [W_q], r: 8`), so their run
keys differ. Two configs are *equivalent* when their semantic configs (`records.semantic_config`)
agree once each method is in its canonical form (`MethodConfig.canonical`). When a run has no
record of its own but an equivalent "ok" run exists in another experiment, that run's folder is
copied into this experiment's folder, its record naming the original under `reused_from`: every
table still reads its own folder's records, and the copy says where its numbers came from. Its
per-example predictions are read from the original's folder, not kept twice. When the original is
rerun (force=true), the copy's next sweep copies it again (`stale_copy`); until then the report
leaves the stale copy out and says so.

A run can also share only its training with another: the learning-rate selection's chosen point
(seed 0, evaluated on the dev split) trains exactly as the table's seed-0 run of the same
configuration, which is evaluated on the test split. Two configs that agree in everything but what
they are evaluated on (`training_key`) train the same weights, so when a finished run of another
experiment kept its weights, the run loads them and only evaluates (`find_trained`); its record
names that run under `trained_in` and carries its training statistics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, NamedTuple

from peftrepro.errors import ConfigError
from peftrepro.runs import records

if TYPE_CHECKING:
    from peftrepro.methods.base import AppliedMethod
    from peftrepro.runs.plan import RunPlan

log = logging.getLogger(__name__)

# weights are machine-local (git-ignored) and can be large: a reused run is a record, not a model;
# its predictions and its kept LoRA factors (lora_factors.safetensors) stay with the original
# (report.records.Record.original_folder), a second copy would only grow the committed results
NOT_COPIED = ("*.safetensors", records.PREDICTIONS_FILE, records.LEGACY_PREDICTIONS_FILE)


# What shows that two runs saw the same training data (records' `data`)
TRAINING_DATA_FIELDS = ("train_examples", "train_split", "train_tokens_per_epoch")
# What a run is evaluated on, not how it trains (`training_key` leaves them out); merging LoRA into W
# for evaluation changes nothing the training saw either
EVALUATION_TASK_KEYS = ("eval_split", "max_eval_examples")
EVALUATION_KEYS = ("decoding", "merge_for_eval")


def _canonical(config: Mapping[str, Any]) -> dict[str, Any]:
    """The semantic config (records.semantic_config) with the method in canonical form."""
    from peftrepro.methods import make_method_config

    semantic = records.semantic_config(config)
    method = dict(semantic["method"])
    semantic["method"] = make_method_config(str(method.get("name")), method).canonical()
    return semantic


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def equivalence_key(config: Mapping[str, Any]) -> str:
    """A hash of what the run computes, with the method in canonical form."""
    return _digest(_canonical(config))


def training_key(config: Mapping[str, Any]) -> str:
    """A hash of how the run trains: `equivalence_key` without what it is evaluated on."""
    semantic = _canonical(config)
    semantic["task"] = {k: v for k, v in semantic["task"].items() if k not in EVALUATION_TASK_KEYS}
    return _digest({k: v for k, v in semantic.items() if k not in EVALUATION_KEYS})


def _originals(plan: RunPlan) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(folder, record) of each "ok" run of another experiment file (conf/experiment) that is not
    itself a copy, so that a copy never hides where its numbers came from. Ad-hoc runs (no experiment
    file) are tries, left out of commits (`adhoc/` is git-ignored): a table copying one would name an
    original, and read predictions, that no clone has."""
    from peftrepro.runs.plan import CONFIG_DIR

    runs_root = plan.directory.parent.parent
    for path in sorted(runs_root.glob(f"*/*/{records.RECORD_FILE}")):
        experiment = path.parent.parent
        if experiment == plan.directory.parent:
            continue  # this experiment: its own records are found by run key
        if not (CONFIG_DIR / "experiment" / f"{experiment.name}.yaml").is_file():
            continue
        record = records.read_record(path.parent)
        if not record or record.get("status") != "ok" or "config" not in record \
                or record.get("reused_from"):
            continue
        yield path.parent, record


def _matching(plan: RunPlan, key: Callable[[Mapping[str, Any]], str]) -> Iterator[tuple[Path, dict[str, Any]]]:
    wanted = key(plan.config)
    for folder, record in _originals(plan):
        try:
            if key(record["config"]) == wanted:
                yield folder, record
        except (ConfigError, KeyError, TypeError):
            continue  # a record of an older schema or a method that no longer exists


def _latest(found: Iterable[tuple[Path, dict[str, Any]]]) -> tuple[Path, dict[str, Any]] | None:
    """The most recently created of (folder, record) pairs: a rerun original supersedes older ones."""
    return max(found, key=lambda pair: str(pair[1].get("created_at") or ""), default=None)


def find_equivalent(plan: RunPlan) -> Path | None:
    """The folder of the latest "ok" run, in another experiment, equivalent to `plan`; None if none."""
    latest = _latest(_matching(plan, equivalence_key))
    return latest[0] if latest else None


class Trained(NamedTuple):
    """A finished run whose kept weights another run can evaluate: its folder and its record as found."""

    folder: Path
    record: dict[str, Any]


def find_trained(plan: RunPlan) -> Trained | None:
    """The latest "ok" run, in another experiment, that trained as `plan` would and kept its weights;
    None if none, or where `plan` must train itself: it reports the best of several evaluations
    (train.eval_every_epoch), keeps LoRA's factors as initialised (lora_factors), or its method
    changes the model on a schedule (MethodConfig.scheduled). The run that trained the weights
    itself, never a run that evaluated them: provenance stays one hop."""
    from peftrepro.methods.checkpoint import CONFIG_FILE, WEIGHTS_FILE
    from peftrepro.methods.factors import keeps_factors

    method = plan.method_config
    if not method.trains or method.scheduled or plan.settings.eval_every_epoch:
        return None
    if method.name == "lora" and keeps_factors(plan.config.get("lora_factors"), method.rank_per_weight()):
        return None
    latest = _latest((folder, record) for folder, record in _matching(plan, training_key)
                     if record.get("weights_kept") and not record.get("trained_in")
                     and all((folder / name).is_file() for name in (WEIGHTS_FILE, CONFIG_FILE)))
    return Trained(*latest) if latest else None


def link_checkpoint(trained: Trained, directory: Path) -> None:
    """The trainer's checkpoint files in `directory`, hard-linked (the evaluated weights are its bytes,
    and an FT checkpoint is 0.5 GB) or copied across file systems. Linking is safe: a checkpoint file
    is replaced by a rename, never rewritten in place."""
    from peftrepro.methods.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    directory.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            os.link(trained.folder / name, directory / name)
        except OSError:  # another file system, or one without hard links
            shutil.copy2(trained.folder / name, directory / name)


def why_not_evaluate(trained: Trained, model: Mapping[str, Any], data: Mapping[str, Any], device: str,
                     applied: AppliedMethod) -> str | None:
    """Why the weights `trained` kept cannot stand for this run's training, checked once the run has
    loaded them (its base model as models.describe gives it, its encoded training data, the device it
    would train on, as envinfo.device_name names it); None when they can. The original's record must
    still be the one found: a rerun or deletion of it meanwhile means the loaded weights may not be
    the ones it describes."""
    theirs = trained.record
    if records.read_record(trained.folder) != theirs:
        return f"the record in {trained.folder} changed or vanished while its weights were loaded"
    if applied.after_step is not None or not applied.is_final():
        return f"method {applied.config.name!r} changes the model on a schedule that its checkpoint does not restore"
    own = {"base weights": model.get("weights_sha256"), "device": device,
           **{name: data.get(name) for name in TRAINING_DATA_FIELDS}}
    other = {"base weights": (theirs.get("model") or {}).get("weights_sha256"),
             "device": (theirs.get("memory") or {}).get("device"),
             **{name: (theirs.get("data") or {}).get(name) for name in TRAINING_DATA_FIELDS}}
    differ = [f"{name} {other[name]} there, {own[name]} here" for name in own if own[name] != other[name]]
    return f"it trained on another start ({'; '.join(differ)})" if differ else None


def provenance(trained: Trained) -> dict[str, Any]:
    """What a record says of the run whose weights it evaluated: which run, made when, by which code and
    packages, where, and what its training cost (kept apart from this run's own timings and memory)."""
    theirs = trained.record
    memory = theirs.get("memory") or {}
    return {"experiment": theirs.get("experiment"), "run_key": theirs.get("run_key"),
            "created_at": theirs.get("created_at"), "git": (theirs.get("env") or {}).get("git"),
            **{key: (theirs.get("env") or {}).get(key) for key in ("hardware", "packages", "python")},
            "threads": theirs.get("threads"),
            "train_s": (theirs.get("timings") or {}).get("train_s"), "throughput": theirs.get("throughput"),
            "memory": {key: memory.get(key) for key in ("device", "train_peak_bytes", "train_kind")}}


def stale_copy(plan: RunPlan, record: Mapping[str, Any]) -> Path | None:
    """The original's folder when `record`, the finished record of `plan`, is a copy that no longer
    stands for its original (records.is_stale_copy). None for a run of its own, a current copy, or one
    whose original is gone, not "ok" or no longer equivalent (the copy then keeps what it was made from)."""
    source = records.copied_from(record)
    if source is None:
        return None
    folder = records.run_folder(plan.directory.parent.parent, *source)
    original = records.read_record(folder)
    if not original or original.get("status") != "ok" or not records.is_stale_copy(record, original):
        return None
    try:
        return folder if equivalence_key(original["config"]) == equivalence_key(plan.config) else None
    except (ConfigError, KeyError, TypeError):
        return None


def copy_equivalent(source: Path, plan: RunPlan) -> dict[str, Any] | None:
    """Copy the run in `source` into `plan.directory` as this experiment's record of `plan`; None, copying
    nothing, when the original is no longer a finished "ok" run (rerun or failed since it was found)."""
    original = records.read_record(source)
    if not original or original.get("status") != "ok":
        log.warning("reuse %s: %s is no longer a finished run, so it is not copied", plan.key, source)
        return None
    staging = plan.directory / f".tmp-reuse-{datetime.now().strftime('%Y%m%d%H%M%S%f')}"
    staging.mkdir(parents=True)
    try:
        for item in source.iterdir():
            if item.is_file() and not item.name.startswith(".") and not any(item.match(p) for p in NOT_COPIED):
                shutil.copy2(item, staging / item.name)
        record = {**original, "run_key": plan.key, "experiment": plan.config["experiment"],
                  "config": plan.recorded_config,
                  "method": {"name": plan.method_config.name, **plan.method_config.options()},
                  "reused_from": {"experiment": original.get("experiment"), "run_key": original.get("run_key"),
                                  "reused_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
        records.write_record(staging, record)
        records.move_into(staging, plan.directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("reuse %s: equivalent finished run %s/%s copied (no training)", plan.key,
             original.get("experiment"), original.get("run_key"))
    return record
