"""A run's plan: the composed config resolved and validated, its key and folder, nothing loaded.

`plan_run` is the check stage of a run (`peftrepro.runs.execute`): every name and number is
validated and the task is built (cheap); a bad input raises ConfigError / DataError here and
nothing is written. It also registers the config resolvers a composed config needs.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from peftrepro import selection
from peftrepro.errors import ConfigError
from peftrepro.interfaces import DecodingConfig
from peftrepro.paths import project_root, resolve_path
from peftrepro.runs import records
from peftrepro.runs.train import TrainSettings
from peftrepro.tasks.data import DATA_ROOT_ENV

RESULTS_ENV = "PEFTREPRO_RESULTS"  # results_dir's default in conf/config.yaml (the Makefile sets it)

LOGGERS = ("none", "wandb")
FAIL_PHASES = (None, "setup", "train", "eval", "interrupt")  # interrupt: as Ctrl-C at the start of training
DEVICES = ("auto", "cpu", "cuda")
SCORING = ("now", "later", "auto")
CONFIG_DIR = project_root() / "conf"

# Hydra's own output dirs (conf/hydra/default.yaml) are placed under the project root, whatever the cwd.
OmegaConf.register_new_resolver("project_path", lambda path: str(resolve_path(str(path))), replace=True)
# Learning rates of the fair protocol (peftrepro.runs.lr_search): a rung of the search's ladder, and the
# rate the search chose for (task, method), read from the choice file under the results folder.
OmegaConf.register_new_resolver("lr_ladder", lambda start, step: selection.ladder(float(start), int(step)),
                                replace=True)
OmegaConf.register_new_resolver(
    "selected_lr", lambda results_dir, profile, model, task, method: selection.selected_lr(
        selection.choice_path(resolve_path(str(results_dir)), str(profile), str(model)), str(task), str(method)),
    replace=True)


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
    defers_scoring: bool  # metrics left to peftrepro.runs.scoring (`defers_scoring`), decided once here

    @property
    def recorded_config(self) -> dict[str, Any]:
        """The config as a record keeps it: the data root and the results folder named by their variables
        where they are those variables' folders (`recorded_data_root`, `recorded_results_dir`)."""
        return {**self.config, "data_root": recorded_data_root(self.config.get("data_root")),
                "results_dir": recorded_results_dir(self.config.get("results_dir"))}


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
    method_config.check_run(config)
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
    from peftrepro.methods.factors import check_option as check_factors_option
    from peftrepro.models import SOURCES, model_dtype

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
    _check_number("debug.interrupt_after_save", config.get("debug", {}).get("interrupt_after_save"), 1, int)
    _check_number("resume_every_s", config.get("resume_every_s"), 0, (int, float))
    _check_device(str(config.get("device", "auto")), config.get("jobs_per_gpu", 1))
    model_dtype(config["model"])
    cpu_threads(config)  # a bad `threads` value is an input error like the others
    check_factors_option(config.get("lora_factors"))  # which trained LoRA factors to keep (an output)
    if config.get("scoring", "now") not in SCORING:
        raise ConfigError(f"scoring={config.get('scoring')!r} must be one of {SCORING}")


def _check_number(name: str, value: Any, minimum: float, kind: type | tuple[type, ...]) -> None:
    """An optional number: null, or a number of `kind` >= minimum."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind) or value < minimum):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={value!r} must be null or {what} >= {minimum}")


def _check_device(device: str, jobs_per_gpu: Any) -> None:
    index = device.removeprefix("cuda:")
    if device not in DEVICES and not (device.startswith("cuda:") and index.isdigit()):
        raise ConfigError(f"device={device!r} must be one of {DEVICES} or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but torch sees no CUDA device; use device=auto or device=cpu")
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device={device} but torch sees {torch.cuda.device_count()} CUDA device(s) (numbered from 0)")
    if not isinstance(jobs_per_gpu, int) or isinstance(jobs_per_gpu, bool) or jobs_per_gpu < 1:
        raise ConfigError(f"jobs_per_gpu={jobs_per_gpu!r} must be an integer >= 1")


def defers_scoring(config: Mapping[str, Any], task: Any) -> bool:
    """Whether this run leaves its metrics to peftrepro.runs.scoring: `scoring: later`, or `auto` on a machine
    without the scorer's tools, and a task whose scorer can run later (E2E); others always score now."""
    from peftrepro.runs.scoring import can_defer

    mode = config.get("scoring", "now")
    return mode != "now" and can_defer(task) and (mode == "later" or bool(task.missing_scoring_tools()))


def _data_root(config: Mapping[str, Any]) -> tuple[str | None, str]:
    """Where the data is read from, and how the record names it (fixtures | a path | hub)."""
    if config.get("use_fixtures"):
        return str(fixture_root(resolve_path(str(config.get("cache_dir", ".cache"))))), "fixtures"
    data_root = config.get("data_root")
    if data_root in (None, ""):  # the task reads $PEFTREPRO_DATA_ROOT, else the hub
        return None, recorded_data_root(os.environ.get(DATA_ROOT_ENV)) or "hub"
    expanded = os.path.expandvars(str(data_root)).strip()  # a record names it `$PEFTREPRO_DATA_ROOT`
    if not expanded or "$" in expanded:
        raise ConfigError(f"data_root={data_root} names an environment variable that is not set (or empty); "
                          f"export {DATA_ROOT_ENV}=/path/to/data, or pass data_root=/path/to/data")
    root = resolve_path(expanded)
    if not root.is_dir():
        raise ConfigError(f"data_root={data_root} is not a directory ({root}); point it at a copy of "
                          f"a data root (the layout of peftrepro.tasks.data; or export {DATA_ROOT_ENV}), or use "
                          "profile=smoke for fixtures")
    return str(root), recorded_data_root(str(root))


def recorded_data_root(path: str | None) -> str | None:
    """How a record names a data root: `$PEFTREPRO_DATA_ROOT` where it is that variable's folder, since
    records move between machines and the folder's path is only this machine's; else the path."""
    return f"${DATA_ROOT_ENV}" if _is_folder_of(DATA_ROOT_ENV, path) else path


def _is_folder_of(variable: str, path: Any) -> bool:
    """Whether `path` is the folder the environment variable `variable` names."""
    value = os.environ.get(variable)
    return bool(path and value and resolve_path(str(path)) == resolve_path(value))


def recorded_results_dir(path: Any) -> Any:
    """How a record names the results folder it was written to: a relative path as given (`results`, the
    same in every clone), `$PEFTREPRO_RESULTS` where an absolute path is that variable's folder (as for the
    data root: this machine's path means nothing on another), else the path."""
    return f"${RESULTS_ENV}" if os.path.isabs(str(path)) and _is_folder_of(RESULTS_ENV, path) else path


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


def cpu_threads(config: Mapping[str, Any], jobs_at_once: int = 1) -> tuple[int, str]:
    """The torch intra-op threads of one run on the CPU, and why (the `threads` option)."""
    choice = config.get("threads", "auto")
    if choice != "auto":
        if not isinstance(choice, int) or isinstance(choice, bool) or choice < 1:
            raise ConfigError(f"threads={choice!r} must be auto or an integer >= 1")
        return choice, "threads=" + str(choice)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    if (config.get("model") or {}).get("source") == "random":
        return 1, "a tiny random model: one thread"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs_at_once)), f"{cores} cores / {jobs_at_once} run(s) at once"
