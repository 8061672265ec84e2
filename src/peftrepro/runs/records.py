"""Run records: the key of a run, where its files live, and writing them so that a killed run
never leaves a record that looks finished.

A run lives in `results/runs/<experiment>/<run_key>/`:
  record.json        the self-describing record (its fields: `execute._Run._record`; `SCHEMA_VERSION`), written LAST
  predictions.jsonl.gz  one row per evaluated example (from the task's `EvalOutput`), gzipped with
                     no timestamp (the same rows give the same bytes); records written before the
                     fair protocol keep a plain predictions.jsonl, which every reader still accepts
  adapter.safetensors + method.json   the trained method's weights (gitignored, so they stay on the
                     machine that trained the run; none with keep_weights=false)
  lora_factors.safetensors   LoRA's A and B of a few layers, fp16, when the run's `lora_factors`
                     option selects it (committed: the input of the paper's §7 analyses; methods.factors)
Every file is written to a temporary name in the same folder and renamed (`os.replace` is atomic
on POSIX and Windows), and record.json only after the others, so `status: ok` in a readable
record means every artefact beside it is complete.

The run key is a hash of what the run *means* (`semantic_config`: model, task, method, training
and decoding settings, seed, data selection), never of the clock or of where results go, so a sweep that is
rerun finds its finished runs and skips them, and two jobs started in the same second cannot
share a folder unless they are the same run (lightning-hydra-template #511).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

from peftrepro.paths import resolve_path

SCHEMA_VERSION = 1
LOCKS_DIR = ".locks"  # under the results folder: one lock file per run being made (gitignored)
RECORD_FILE = "record.json"
PREDICTIONS_FILE = "predictions.jsonl.gz"
LEGACY_PREDICTIONS_FILE = "predictions.jsonl"  # plain text, in records of earlier versions

# Only these train settings are left out of the key: they change what is printed, not what is computed.
REPORTING_TRAIN_KEYS = ("progress", "log_every")
# Settings that say where a run keeps things, not what it computes: the converted model's cache folder.
# The key holds each at the one value every run was keyed at before, so a run made with another value
# (PEFTREPRO_CACHE elsewhere) finds the same record. (Batch padding is not one: dropout draws its masks
# over the padded batch, so another padding is another draw.)
HELD_IN_KEY = {"model": {"cache_dir": ".cache/models"}}


def semantic_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that defines what a run computes (the input of the run key).

    In: model, task (with its splits and example limits), method, train and decoding settings,
    seed, fixtures-or-real-data, LoRA merging for evaluation, an evaluated peft adapter's files (their
    digest, `adapter_files`), and an injected failure (so a test's
    failed record never shadows the real run). Out: experiment, results_dir, force, logger, hydra,
    data_root (results move between machines), device, jobs_per_gpu, threads, scoring (now or later,
    the same metrics), lora_factors (which trained factors are kept), and the profiles' lookup tables
    (already resolved into train/decoding); model.cache_dir enters at one value (HELD_IN_KEY). A model
    in the default dtype leaves `dtype` out, and LoRA
    on the base as loaded leaves `quantize: null` out, so the keys of runs made before either could be
    chosen stay.
    """
    missing = [key for key in ("model", "task", "method", "train", "decoding", "seed") if key not in config]
    if missing:
        raise KeyError(f"config lacks {missing}; cannot compute a run key")
    train = {k: v for k, v in config["train"].items() if k not in REPORTING_TRAIN_KEYS}
    debug = config.get("debug") or {}
    return {"model": _model_for_key(config["model"]), "task": config["task"],
            "method": _method_for_key(config["method"]), "train": train, "decoding": config["decoding"],
            "data": {"fixtures": bool(config.get("use_fixtures"))},
            "seed": config["seed"], "merge_for_eval": config.get("merge_for_eval", True),
            **adapter_files(config["method"]),
            **({"debug": {"fail_at": debug["fail_at"]}} if debug.get("fail_at") else {})}


def _model_for_key(model: Mapping[str, Any]) -> dict[str, Any]:
    # fp32: models.DEFAULT_DTYPE (not imported: the records layer sits below the model loading)
    keyed = {key: HELD_IN_KEY["model"].get(key, value) for key, value in model.items()
             if not (key == "dtype" and value in (None, "fp32"))}
    if keyed.get("dtype") in HALF_DTYPES:  # runs from when a method's own parameters took the half dtype
        keyed["trainable_dtype"] = "fp32"  # are not this (methods.base.trainable_dtype): a key of their own
    return keyed


HALF_DTYPES = ("bf16", "fp16")
# method options added after runs were recorded, at the value that computes what those runs did
_METHOD_DEFAULTS_OUT_OF_KEY = {"quantize": None}  # LoRA's base as loaded (methods/quantize.py: QLoRA's 4 bits)


# movement pruning's scores as Eq. 3's plain sum: what its runs computed before `scores` existed (score_lr
# is Adam's alone), so those runs keep their keys
_PLAIN_SUM_SCORES = {"name": "movement_pruning", "scores": "sum"}


def method_as_run(method: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded method config with what it ran under though recorded before the option existed (a movement
    run's scores before `scores`: Eq. 3's plain sum), so a reader tells it from a run of today's default."""
    if method.get("name") == _PLAIN_SUM_SCORES["name"] and "scores" not in method:
        return {**method, "scores": _PLAIN_SUM_SCORES["scores"]}
    return dict(method)


def _method_for_key(method: Mapping[str, Any]) -> dict[str, Any]:
    keyed = {key: value for key, value in method.items()
             if not (key in _METHOD_DEFAULTS_OUT_OF_KEY and value == _METHOD_DEFAULTS_OUT_OF_KEY[key])}
    if all(keyed.get(key) == value for key, value in _PLAIN_SUM_SCORES.items()):
        keyed = {key: value for key, value in keyed.items() if key not in ("scores", "score_lr")}
    if keyed.get("quantize") is not None:  # `{quant_type: nf4}` stores the base as its spelled-out form does
        from peftrepro.methods.quantize import QuantizeConfig  # here: only a 4-bit base's key needs torch

        keyed["quantize"] = QuantizeConfig.from_options(keyed["quantize"]).options()
    return keyed


def adapter_files(method: Mapping[str, Any]) -> dict[str, str]:
    """An evaluated peft adapter's files' digest, keyed beside its path: an adapter exported again into the
    same folder is another run, not a skip that reports the old adapter's metrics. Nothing for another
    method, or where there are no files to read (the method's own check then stops with one clear error)."""
    if method.get("name") != "peft_adapter" or not method.get("path"):
        return {}
    from peftrepro.methods.interop import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, adapter_digest

    directory = resolve_path(str(method["path"]))
    if not all((directory / name).is_file() for name in (PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE)):
        return {}
    return {"adapter_sha256": adapter_digest(directory)}


def run_key(config: Mapping[str, Any]) -> str:
    """`<task>-<method>-<model>-s<seed>-<hash>`: readable, and unique per semantic config."""
    semantic = semantic_config(config)
    digest = hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()
    readable = "-".join(str(part) for part in (semantic["task"]["name"], semantic["method"]["name"],
                                               semantic["model"]["name"], f"s{semantic['seed']}"))
    return f"{_slug(readable)}-{digest[:12]}"


def run_dir(results_dir: str | os.PathLike[str], experiment: str, key: str) -> Path:
    return run_folder(resolve_path(results_dir) / "runs", experiment, key)


def run_folder(runs_root: Path, experiment: str, key: str) -> Path:
    """Where a run's files live under a runs folder (`results/runs`, or one given as it is)."""
    return runs_root / _slug(experiment) / key


def copied_from(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """(experiment, run key) of the run a copy (peftrepro.runs.reuse) was made from; None for a run of its own."""
    source = record.get("reused_from")
    if isinstance(source, Mapping) and source.get("experiment") and source.get("run_key"):
        return str(source["experiment"]), str(source["run_key"])
    return None


def is_stale_copy(copy: Mapping[str, Any], original: Mapping[str, Any]) -> bool:
    """Whether a copy no longer stands for its original's record. A copy carries its original's
    created_at, so the two differ once the original is rerun (force=true): the copy's numbers are then
    the earlier run's, while the predictions and factors it reads from the original's folder are the new run's."""
    return copy.get("created_at") != original.get("created_at")


def record_problem(directory: Path) -> str | None:
    """Why the record in `directory` cannot be read, when there is a file that cannot; else None."""
    path = directory / RECORD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return None if isinstance(data, dict) else "not a JSON object"


@contextmanager
def claimed(results_dir: str | os.PathLike[str], experiment: str, key: str) -> Iterator[bool]:
    """Claim a run for as long as the block lasts: yields True when this process holds it, False when
    another live process does. An OS lock (flock) on `<results>/.locks/<experiment>/<key>.lock`: the
    kernel releases it when its process ends however it ends (kill -9 included), so a claim never
    outlives its run and no stale lock needs cleaning. Only the holder writes in the run's folder."""
    path = resolve_path(results_dir) / LOCKS_DIR / _slug(experiment) / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_record(directory: Path) -> dict[str, Any] | None:
    """The record in `directory`, or None when there is none or it is unreadable."""
    try:
        return json.loads((directory / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# A run that cannot apply to its model by definition (errors.NotApplicableError): final, like "ok".
NOT_APPLICABLE = "not_applicable"
FINISHED_STATUSES = ("ok", NOT_APPLICABLE)
# Stopped by Ctrl-C or SIGTERM (a cancelled SLURM job): not a failure of the run's code; retried
# like a failed run by the next sweep.
INTERRUPTED = "interrupted"
# Trained and decoded, predictions saved, metrics not computed yet (config `scoring: later`, or `auto`
# without Java):
# `peftrepro.runs.scoring` turns it into "ok" without training again.
UNSCORED = "unscored"


def status_of(directory: Path) -> str | None:
    """The status of the record in `directory`; None when there is no readable record."""
    record = read_record(directory)
    return None if record is None else record.get("status")


def is_finished(directory: Path) -> bool:
    return status_of(directory) in FINISHED_STATUSES


def write_record(directory: Path, record: Mapping[str, Any]) -> Path:
    return atomic_write_text(directory / RECORD_FILE, json.dumps(record, indent=2, sort_keys=False,
                                                                 default=json_default) + "\n")


def write_predictions(directory: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    lines = "".join(json.dumps(row, ensure_ascii=False, default=json_default) + "\n" for row in rows)
    return atomic_write_bytes(directory / PREDICTIONS_FILE, gzip.compress(lines.encode("utf-8"), mtime=0))


def predictions_path(directory: Path) -> Path:
    """The predictions file of the run in `directory`: gzipped, or the plain file of an older record."""
    legacy = directory / LEGACY_PREDICTIONS_FILE
    return legacy if legacy.is_file() and not (directory / PREDICTIONS_FILE).is_file() else directory / PREDICTIONS_FILE


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The rows of a predictions file (gzipped or plain). OSError / ValueError when unreadable."""
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text` to a temp file beside `path`, fsync, then rename over `path`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync, then rename over `path`."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """`write(handle)` into a temp file beside `path`, fsync, then rename over `path` (a large
    file, e.g. a saved training state, streams to disk without a copy in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; records are meant to be shared
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def move_into(source_dir: Path, target_dir: Path) -> None:
    """Move every file of `source_dir` into `target_dir` (atomic per file), then drop source_dir."""
    target_dir.mkdir(parents=True, exist_ok=True)
    for item in source_dir.iterdir():
        os.replace(item, target_dir / item.name)
    source_dir.rmdir()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "_"


def json_default(value: Any) -> Any:
    """JSON for the few non-JSON values that reach a record (paths, numpy / torch scalars)."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
