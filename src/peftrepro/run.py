"""One run: a composed config in, one record out (`python -m peftrepro.run`, `peftrepro-run`).

    check    resolve the config, validate every name and number, build the task (cheap; a bad input
             raises ConfigError/DataError here and NOTHING is written)
    skip     results/runs/<experiment>/<run_key>/record.json says ok and force=false -> return it
             (says "unscored", from a run with `scoring: later|auto`: score its saved predictions, no
             training; peftrepro.scoring)
    set up   load data, model, apply the method, encode (an input error found here, e.g. a model that
             cannot be found, still writes nothing)
    train    peftrepro.train.fit, evaluating after each epoch when the profile asks
    record   predictions.jsonl, adapter.safetensors + method.json, then record.json (last, atomic);
             with `scoring: later` (or `auto` without Java) a task whose scorer needs Java (E2E)
             leaves its metrics to peftrepro.scoring and the record says "unscored"
Any other exception from set-up on writes a `failed` record with the traceback and is re-raised,
so the job exits non-zero; in a multirun Hydra's launcher goes on with the other jobs and the
sweep exits non-zero at the end.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import hydra
import torch
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from peftrepro import envinfo, records, reuse, selection
from peftrepro.errors import ConfigError, NotApplicableError, PeftReproError
from peftrepro.interfaces import DecodingConfig, EvalOutput
from peftrepro.records import project_root, resolve_path
from peftrepro.train import (TrainSettings, TrainStats, autocast_for, fit, make_train_state, seed_everything,
                             total_steps, warmup_steps)

log = logging.getLogger("peftrepro.run")

LOGGERS = ("none", "wandb")
FAIL_PHASES = (None, "setup", "train", "eval")
DEVICES = ("auto", "cpu", "cuda")
SCORING = ("now", "later", "auto")
CONFIG_DIR = project_root() / "conf"

# Hydra's own output dirs (conf/hydra/default.yaml) are placed under the project root, whatever the cwd.
OmegaConf.register_new_resolver("project_path", lambda path: str(resolve_path(str(path))), replace=True)
# Learning rates of the fair protocol (peftrepro.lr_search): a rung of the search's ladder, and the
# rate the search chose for (task, method), read from the choice file under the results folder.
OmegaConf.register_new_resolver("lr_ladder", lambda start, step: selection.ladder(float(start), int(step)),
                                replace=True)
OmegaConf.register_new_resolver(
    "selected_lr", lambda results_dir, profile, model, task, method: selection.selected_lr(
        selection.choice_path(resolve_path(str(results_dir)), str(profile), str(model)), str(task), str(method)),
    replace=True)


class RunFailed(CompactHydraException):
    """What the CLI prints for a failed job: one line, the traceback is in the record or the log."""


class InjectedFailure(RuntimeError):
    """Raised by `debug.fail_at` (tests of failure isolation)."""


# ---------------------------------------------------------------- check (nothing written)

@dataclass
class RunPlan:
    """A validated run: every input checked, nothing loaded yet."""

    config: dict[str, Any]
    key: str
    directory: Path
    settings: TrainSettings
    decoding: DecodingConfig
    method_config: Any
    task: Any
    data_source: str
    defers_scoring: bool  # metrics left to peftrepro.scoring (`defers_scoring`), decided once here


def plan_run(cfg: DictConfig | Mapping[str, Any]) -> RunPlan:
    """Resolve and validate `cfg`; raise one ConfigError/DataError naming what is wrong."""
    from peftrepro.methods import make_method_config
    from peftrepro.tasks import make_task

    config = resolved_config(cfg)
    settings = TrainSettings.from_config(config["train"])
    decoding = _decoding(config["decoding"])
    _check_choices(config)
    method_node = dict(config["method"])
    method_config = make_method_config(str(method_node.get("name")), method_node)
    data_root, data_source = _data_root(config)
    task = make_task(str(config["task"].get("name")), data_root, dict(config["task"]))
    deferred = defers_scoring(config, task)
    if deferred and settings.eval_every_epoch:
        raise ConfigError(f"scoring={config.get('scoring')} defers E2E scoring here, so it cannot pick the best "
                          "epoch (train.eval_every_epoch=true needs the scores of every epoch): score now (on a "
                          "machine with Java), or set train.eval_every_epoch=false")
    key = records.run_key(config)
    directory = records.run_dir(config["results_dir"], str(config["experiment"]), key)
    return RunPlan(config, key, directory, settings, decoding, method_config, task, data_source, deferred)


def resolved_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The config as plain data with every interpolation resolved (Hydra's own node dropped)."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if isinstance(
            cfg, DictConfig) else dict(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(f"config does not resolve: {error}".replace("\n", " ")) from error
    container.pop("hydra", None)
    for key in ("model", "task", "method", "train", "decoding", "logger", "seed", "experiment"):
        if key not in container:
            raise ConfigError(f"config has no `{key}`; compose it from conf/config.yaml")
    return container


def _decoding(node: Mapping[str, Any]) -> DecodingConfig:
    try:
        decoding = DecodingConfig(**node)
    except TypeError as error:
        raise ConfigError(f"decoding: {error}; valid keys: {list(DecodingConfig.__dataclass_fields__)}") from error
    for name in ("num_beams", "max_new_tokens", "batch_size"):
        if int(getattr(decoding, name)) < 1:
            raise ConfigError(f"decoding.{name}={getattr(decoding, name)} must be >= 1")
    return decoding


def _check_choices(config: Mapping[str, Any]) -> None:
    from peftrepro.models import SOURCES

    seed = config["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be an integer >= 0")
    if config["model"].get("source") not in SOURCES:
        raise ConfigError(f"model.source={config['model'].get('source')!r} must be one of {SOURCES}")
    logger = config["logger"].get("name")
    if logger not in LOGGERS:
        raise ConfigError(f"logger.name={logger!r} must be one of {LOGGERS}")
    if logger == "wandb":
        import importlib.util
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("logger=wandb needs the wandb package: pip install 'peft-repro[wandb]'")
    fail_at = config.get("debug", {}).get("fail_at")
    if fail_at not in FAIL_PHASES:
        raise ConfigError(f"debug.fail_at={fail_at!r} must be one of {FAIL_PHASES}")
    if config.get("device", "auto") not in DEVICES:
        raise ConfigError(f"device={config.get('device')!r} must be one of {DEVICES}")
    if config.get("device") == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device; use device=auto or device=cpu")
    if config.get("scoring", "now") not in SCORING:
        raise ConfigError(f"scoring={config.get('scoring')!r} must be one of {SCORING}")


def defers_scoring(config: Mapping[str, Any], task: Any) -> bool:
    """Whether this run leaves its metrics to peftrepro.scoring: `scoring: later`, or `auto` on a machine
    without the scorer's tools, and a task whose scorer can run later (E2E); others always score now."""
    from peftrepro.scoring import can_defer

    mode = config.get("scoring", "now")
    return mode != "now" and can_defer(task) and (mode == "later" or bool(task.missing_scoring_tools()))


def _data_root(config: Mapping[str, Any]) -> tuple[str | None, str]:
    """Where the data is read from, and how the record names it (fixtures | a path | hub)."""
    if config.get("use_fixtures"):
        return str(fixture_root(resolve_path(str(config.get("cache_dir", ".cache"))))), "fixtures"
    data_root = config.get("data_root")
    if data_root in (None, ""):
        import os
        env = os.environ.get("PEFTREPRO_DATA_ROOT")
        return None, env if env else "hub"
    root = resolve_path(str(data_root))
    if not root.is_dir():
        raise ConfigError(f"data_root={data_root} is not a directory ({root}); point it at a copy of "
                          "../shared/data (or export PEFTREPRO_DATA_ROOT), or use profile=smoke for fixtures")
    return str(root), str(root)


def fixture_root(cache_dir: Path) -> Path:
    """The fixture data root, written once per version of the fixture code.

    Written to a temporary folder and renamed into place, so parallel jobs of a sweep never read
    a half-written file; the folder name carries a hash of `peftrepro/tasks/fixtures.py`, so a
    change there gives fresh fixtures.
    """
    import hashlib
    import tempfile

    from peftrepro.tasks import fixtures

    version = hashlib.sha256(Path(fixtures.__file__).read_bytes()).hexdigest()[:10]
    target = cache_dir / "fixtures" / version
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        fixtures.write_fixtures(staging)
        try:
            staging.rename(target)
        except OSError:  # another job got there first: its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------- run

def run_one(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Run `cfg` to a record (or return the finished record of an identical earlier run)."""
    # The commit of the code this process runs: read before training (cached), since a commit made
    # while a long run trains must not be credited with its numbers.
    envinfo.git_state()
    plan = plan_run(cfg)
    if not plan.config.get("force") and records.is_finished(plan.directory):
        log.info("skip %s: finished record at %s (force=true reruns it)", plan.key, plan.directory)
        return records.read_record(plan.directory) or {}
    if not plan.config.get("force") and records.status_of(plan.directory) == records.UNSCORED:
        return _score_unscored(plan)
    if not plan.config.get("force") and plan.config.get("reuse_equivalent_runs", True):
        equivalent = reuse.find_equivalent(plan)
        if equivalent is not None:
            return reuse.copy_equivalent(equivalent, plan)
    log.info("run %s -> %s", plan.key, plan.directory)
    return _Run(plan).execute()


def _score_unscored(plan: RunPlan) -> dict[str, Any]:
    """A run trained and decoded earlier without scoring: score it now, or leave it for later."""
    from peftrepro.scoring import score_saved

    if plan.defers_scoring:
        log.info("skip %s: predictions saved, scoring deferred (scoring=%s) at %s", plan.key,
                 plan.config.get("scoring"), plan.directory)
        return records.read_record(plan.directory) or {}
    log.info("score %s: saved predictions at %s (no training)", plan.key, plan.directory)
    return score_saved(plan.directory, plan.task)


@dataclass
class _Run:
    """The state of one run while it executes; becomes the record."""

    plan: RunPlan
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=lambda: {"load_s": 0.0, "train_s": 0.0, "eval_s": 0.0})
    partial: dict[str, Any] = field(default_factory=dict)  # record fields known so far

    def execute(self) -> dict[str, Any]:
        for stale in self.plan.directory.glob(".tmp-run-*"):  # left by a killed attempt
            shutil.rmtree(stale, ignore_errors=True)
        staging = self.plan.directory / f".tmp-run-{datetime.now().strftime('%Y%m%d%H%M%S%f')}"
        try:
            setup = self._set_up()
        except NotApplicableError as error:  # a legitimate table cell: "n/a" with the reason
            return self._write_not_applicable(error)
        except PeftReproError:
            raise  # an input error found while loading: nothing written (see module doc)
        except BaseException as error:
            self._write_failed(error)
            raise
        tracker, exit_code = _Tracker(), 1
        try:
            tracker = _tracker(self.plan)
            record = self._train_and_evaluate(setup, staging, tracker)
            exit_code = 0
            return record
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            self._write_failed(error)
            raise
        finally:
            tracker.finish(exit_code)  # always: runs of a sweep must not merge (wandb #1314)

    # -- phases

    def _set_up(self) -> "_Setup":
        from peftrepro.methods import apply_method, count_parameters
        from peftrepro.models import context_length, describe, load_model

        plan, config = self.plan, self.plan.config
        began = time.perf_counter()
        seed_everything(int(config["seed"]), plan.settings.deterministic)
        task = plan.task
        train_rows = task.load_split(task.options.train_split, task.options.max_train_examples)
        eval_rows = task.load_split(task.options.eval_split, task.options.max_eval_examples)
        if not train_rows:
            raise ConfigError(f"task {task.name}: split {task.options.train_split!r} has no examples; zero steps")
        model, tokenizer = load_model(config["model"])
        self.partial["model"] = describe(model, config["model"])
        _fail_if(config, "setup")
        applied = apply_method(model, plan.method_config)
        settings = replace(plan.settings, max_length=_sequence_length(plan, applied.prompt.n_virtual,
                                                                     context_length(model)))
        trainable, total = count_parameters(model)
        self.partial["params"] = {"trainable": int(trainable), "total": int(total)}
        device = _device(config)
        model.to(device)
        encoded = [task.encode(row, tokenizer, applied.prompt, plan.settings.max_length) for row in train_rows]
        self.partial["data"] = {"train_examples": len(encoded), "eval_examples": len(eval_rows),
                                "train_split": task.options.train_split, "eval_split": task.options.eval_split,
                                "source": plan.data_source,
                                "train_tokens_per_epoch": sum(len(e.input_ids) for e in encoded)}
        self.timings["load_s"] = time.perf_counter() - began
        return _Setup(model, tokenizer, applied, encoded, eval_rows, device, settings)

    def _train_and_evaluate(self, setup: "_Setup", staging: Path, tracker: "_Tracker") -> dict[str, Any]:
        from peftrepro.methods import save_adapter

        plan, config, settings = self.plan, self.plan.config, setup.settings
        if setup.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(setup.device)
        per_epoch: list[dict[str, Any]] = []
        best: dict[str, Any] = {}
        primary = plan.task.primary_metric

        def evaluate(epoch: int, step: int) -> None:
            output = self._evaluate(setup)
            row = {"epoch": epoch, **output.metrics}
            per_epoch.append(row)
            tracker.log({f"eval/{k}": v for k, v in output.metrics.items() if isinstance(v, (int, float))}, step)
            if not best or _score(row, primary) > _score(best["row"], primary):
                best.update(row=row, output=output, bytes=0)
                if plan.method_config.trains:  # the zero-shot baseline has no weights of its own
                    shutil.rmtree(staging / "adapter", ignore_errors=True)
                    best["bytes"] = save_adapter(setup.model, plan.method_config, staging / "adapter")

        _fail_if(config, "train")
        if not plan.method_config.trains:  # method `none`: the zero-shot baseline, evaluated as loaded
            evaluate(0, 0)
            return self._finish(staging, TrainStats(), per_epoch, best, setup)
        num_steps = total_steps(len(setup.encoded), settings)
        state = make_train_state(setup.model, settings, num_steps, warmup_steps(setup.encoded, settings),
                                 setup.device)
        stats = fit(state, setup.encoded, setup.tokenizer.pad_token_id, int(config["seed"]), on_log=tracker.log,
                    on_epoch_end=(lambda epoch: evaluate(epoch, state.step)) if settings.eval_every_epoch else None)
        self.timings["train_s"] = stats.seconds
        if not settings.eval_every_epoch:
            evaluate(stats.epochs, state.step)
        return self._finish(staging, stats, per_epoch, best, setup)

    def _evaluate(self, setup: "_Setup") -> EvalOutput:
        plan = self.plan
        began = time.perf_counter()
        _fail_if(plan.config, "eval")
        deferred = {"score": False} if plan.defers_scoring else {}
        with _merged(setup.applied, plan.config.get("merge_for_eval", True)), \
                autocast_for(setup.device, plan.settings.precision):
            output = plan.task.evaluate(setup.model, setup.tokenizer, setup.eval_rows, setup.applied.prompt,
                                        plan.decoding, **deferred)
        self.timings["eval_s"] += time.perf_counter() - began
        log.info("eval: %s", {k: v for k, v in output.metrics.items()})
        return output

    def _finish(self, staging: Path, stats: TrainStats, per_epoch: list[dict[str, Any]], best: dict[str, Any],
                setup: "_Setup") -> dict[str, Any]:
        plan = self.plan
        directory = plan.directory
        (directory / records.RECORD_FILE).unlink(missing_ok=True)  # an old record never vouches for new files
        records.write_predictions(staging, best["output"].predictions)
        if (staging / "adapter").is_dir():
            records.move_into(staging / "adapter", directory)
        records.move_into(staging, directory)
        record = self._record("ok" if best["output"].scored else records.UNSCORED, None, setup.device)
        record.update(
            metrics=best["row"] and {k: v for k, v in best["row"].items() if k != "epoch"},
            metrics_per_epoch=per_epoch,
            best_epoch=best["row"]["epoch"] if plan.settings.eval_every_epoch else None,
            checkpoint_bytes=int(best["bytes"]),
            eval_notes=best["output"].notes,
            training={"steps": stats.steps, "epochs": stats.epochs, "tokens": stats.tokens,
                      "padded_tokens": stats.padded_tokens, "final_loss": stats.last_loss,
                      "loss_curve": [list(point) for point in stats.losses]},
            throughput={"train_tokens_per_s": stats.tokens_per_s,
                        "train_padded_tokens_per_s": stats.padded_tokens / stats.seconds if stats.seconds else 0.0},
        )
        records.write_record(directory, record)
        log.info("%s %s: %s", record["status"], plan.key, record["metrics"])
        return records.read_record(directory) or record  # as written: plain JSON types

    # -- records

    def _record(self, status: str, error: dict[str, str] | None, device: torch.device | None) -> dict[str, Any]:
        plan, config = self.plan, self.plan.config
        self.timings["total_s"] = time.perf_counter() - self.started
        return {
            "schema_version": records.SCHEMA_VERSION, "run_key": plan.key, "experiment": config["experiment"],
            "status": status, "error": error, "config": config, "seed": config["seed"],
            "profile": config.get("profile_name"), "model": self.partial.get("model"),
            "task": plan.task.name, "method": {"name": plan.method_config.name, **plan.method_config.options()},
            "metrics": {}, "metrics_per_epoch": [], "best_epoch": None,
            "params": self.partial.get("params"), "checkpoint_bytes": None, "data": self.partial.get("data"),
            "timings": dict(self.timings), "throughput": {"train_tokens_per_s": None},
            "memory": _peak_memory(device), "env": envinfo.environment(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _write_not_applicable(self, error: NotApplicableError) -> dict[str, Any]:
        record = self._record(records.NOT_APPLICABLE, {"type": type(error).__name__, "message": str(error),
                                                       "traceback": ""}, None)
        records.write_record(self.plan.directory, record)
        log.warning("run %s is not applicable: %s", self.plan.key, error)
        return record

    def _write_failed(self, error: BaseException) -> None:
        details = {"type": type(error).__name__, "message": str(error),
                   "traceback": "".join(traceback.format_exception(error))}
        try:
            records.write_record(self.plan.directory, self._record("failed", details, None))
            log.error("run %s failed (%s: %s); record at %s", self.plan.key, type(error).__name__, error,
                      self.plan.directory / records.RECORD_FILE)
        except Exception:  # never hide the original error behind a failure to record it
            log.exception("could not write the failed record of %s", self.plan.key)


@dataclass
class _Setup:
    model: torch.nn.Module
    tokenizer: Any
    applied: Any
    encoded: list
    eval_rows: list
    device: torch.device
    settings: TrainSettings  # the plan's, with the longest sequence this method makes


def _sequence_length(plan: RunPlan, n_virtual: int, context: int | None) -> int:
    """The longest training sequence: the example's own tokens (train.max_length) plus the method's
    virtual tokens, which must fit the model's context (prefix tuning spends context, paper §3)."""
    length = plan.settings.max_length + n_virtual
    if context is not None and length > context:
        raise ConfigError(
            f"train.max_length={plan.settings.max_length} example tokens + {n_virtual} virtual tokens of "
            f"method {plan.method_config.name!r} = {length} exceed the model's context of {context} "
            f"positions; lower task.max_length or method.prefix_length / method.infix_length")
    return length


def _score(row: Mapping[str, Any], metric: str) -> float:
    value = row.get(metric)
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else -math.inf


@contextmanager
def _merged(applied: Any, enabled: bool) -> Iterator[None]:
    """LoRA folded into W for evaluation (no extra latency, paper §4.2), unfolded afterwards."""
    if not (enabled and getattr(applied, "mergeable", None)):
        yield
        return
    applied.merge()
    try:
        yield
    finally:
        applied.unmerge()


def _fail_if(config: Mapping[str, Any], phase: str) -> None:
    if config.get("debug", {}).get("fail_at") == phase:
        raise InjectedFailure(f"injected failure in phase {phase!r} (debug.fail_at={phase})")


def _device(config: Mapping[str, Any]) -> torch.device:
    choice = config.get("device", "auto")
    return torch.device("cuda" if choice == "cuda" or choice == "auto" and torch.cuda.is_available() else "cpu")


def _peak_memory(device: torch.device | None) -> dict[str, Any]:
    if device is not None and device.type == "cuda":
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(device)), "device": envinfo.device_name(device),
                "kind": "torch.cuda.max_memory_allocated"}
    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "device": envinfo.device_name(torch.device("cpu")), "kind": "process max RSS"}


# ---------------------------------------------------------------- experiment tracker

class _Tracker:
    """No-op tracker (logger=none); `_WandbTracker` streams to wandb."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self, exit_code: int) -> None:
        pass


class _WandbTracker(_Tracker):
    def __init__(self, plan: RunPlan) -> None:
        import wandb

        node = plan.config["logger"]
        directory = resolve_path(str(node.get("dir") or ".cache/wandb"))
        directory.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(mode=node.get("mode", "offline"), project=node.get("project"),
                               entity=node.get("entity"), group=node.get("group"), name=plan.key,
                               tags=list(node.get("tags") or []), dir=str(directory), config=plan.config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def finish(self, exit_code: int) -> None:
        self._run.finish(exit_code=exit_code)


def _tracker(plan: RunPlan) -> _Tracker:
    return _WandbTracker(plan) if plan.config["logger"].get("name") == "wandb" else _Tracker()


# ---------------------------------------------------------------- Hydra entry point

@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """One Hydra job. Returns the primary metric (for Hydra sweepers that optimise it)."""
    try:
        record = run_one(cfg)
    except PeftReproError as error:
        if _in_multirun():  # Hydra reports only the first failed job of a sweep: log each one
            log.error("%s: %s", type(error).__name__, error)
        raise RunFailed(f"{type(error).__name__}: {error}") from None
    except Exception as error:
        raise RunFailed(f"run failed: {type(error).__name__}: {error} (traceback in the run's record.json "
                        f"and in Hydra's log)") from error
    value = (record.get("metrics") or {}).get(_primary_metric(str(record.get("task"))))
    return float(value) if isinstance(value, (int, float)) else None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _primary_metric(task_name: str) -> str:
    from peftrepro.tasks import TASKS

    return str(getattr(TASKS.get(task_name), "primary_metric", ""))


def main() -> None:
    """Console script `peftrepro-run` (same arguments as `python -m peftrepro.run`)."""
    hydra_main()


if __name__ == "__main__":
    main()
