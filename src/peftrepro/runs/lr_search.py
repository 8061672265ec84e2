"""The learning-rate selection stage: `make select-lr` (python -m peftrepro.runs.lr_search).

The paper tunes the learning rate per method (App. D.3, D.4; Table 12: "same hyperparameters for
all datasets after tuning learning rate"). Here every (task, method) of a table gets the same care:

    for each task, for each method, on its representative configuration (conf/lr_search: the arm
    its learning rate is chosen on, e.g. Adapter^H r=8 for both Adapter^H rows, LoRA r_q=r_v=8 for
    every LoRA cell of Tables 4, 5 and 6, as the paper uses one rate for its GPT-3 LoRA cells):
      run the ladder window around the method's start value (`peftrepro.selection`), seed 0,
      evaluating on the task's DEV split (never the evaluation set; E2E: the official validation set)
      while the winner sits on the window's edge, run one rung further (while no rate beats the dev
      split's majority class, where the task has one, one rung further on both sides)
      write the winner, the grid and every dev score to <results>/learning_rates/<profile>-<model>.json

Each search point is an ordinary run (`experiment=lr_search`, records under
<results>/runs/lr_search/), launched as a Hydra multirun with the launcher you choose, so finished
points are skipped and an interrupted search resumes. The table runs then read their rate from the
choice file (`${selected_lr:...}` in conf/profile/mini.yaml), and each table's page shows the grid,
the dev scores and the choice, read from the search's own records.

    python -m peftrepro.runs.lr_search --profile mini --tasks e2e [--methods lora] [-- hydra overrides]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from peftrepro import selection
from peftrepro.errors import PeftReproError
from peftrepro.metrics.majority import against_majority
from peftrepro.runs import records

log = logging.getLogger("peftrepro.runs.lr_search")

EXPERIMENT = "lr_search"
MAX_ROUNDS = 12  # a search adds at most max_points - width rungs; this only stops a runaway loop


@dataclass(frozen=True)
class Representative:
    """The configuration one (task, method)'s learning rate is chosen on."""

    task: str
    method: str
    overrides: tuple[str, ...]  # Hydra overrides selecting the arm, e.g. ("+experiment/e2e_arm=lora",)


def compose(overrides: Sequence[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from peftrepro.runs.plan import CONFIG_DIR  # registers the config resolvers

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            return hydra_compose(config_name="config", overrides=list(overrides))
        except (HydraException, OmegaConfBaseException) as error:  # e.g. a typo in ARGS or --profile
            raise PeftReproError(f"lr_search: the overrides {' '.join(overrides)} do not compose: "
                                 f"{str(error).split('Config search path')[0].strip()}") from None


def search_settings(profile: str, extra: Sequence[str]) -> dict[str, Any]:
    """The profile's `lr_search` node and whether it selects learning rates at all."""
    from omegaconf import OmegaConf

    cfg = compose([f"profile={profile}", *extra])
    return {"enabled": bool(cfg.get("lr_selection", False)), **OmegaConf.to_container(cfg.lr_search, resolve=False),
            "results_dir": str(cfg.results_dir), "model": str(cfg.model.name)}


def representatives(settings: Mapping[str, Any], tasks: Sequence[str], methods: Sequence[str] | None
                    ) -> list[Representative]:
    found = []
    for task in tasks:
        arms = (settings.get("representatives") or {}).get(task)
        if arms is None:
            raise PeftReproError(f"lr_search: no representatives for task {task!r} in conf/lr_search "
                                 f"(tasks with some: {sorted(settings.get('representatives') or {})})")
        for method, override in arms.items():
            if methods is None or method in methods:
                found.append(Representative(task, method, tuple(str(override).split())))
    if methods is not None and not found:
        raise PeftReproError(f"lr_search: none of the methods {list(methods)} has a representative for tasks "
                             f"{list(tasks)} in conf/lr_search")
    return found


def point_overrides(profile: str, rep: Representative, extra: Sequence[str]) -> list[str]:
    return [f"experiment={EXPERIMENT}", f"profile={profile}", f"task={rep.task}", *rep.overrides, *extra]


def point_directory(profile: str, rep: Representative, step: int, extra: Sequence[str]) -> Path:
    from peftrepro.runs.plan import plan_run

    return plan_run(compose([*point_overrides(profile, rep, extra), f"lr_step={step}"])).directory


def point_learned(directory: Path) -> bool | None:
    """Whether a classification point beat its dev split's majority class (`peftrepro.metrics.majority`,
    the rule a table cell is judged by); None for a task without one, or before the point ran."""
    path = records.predictions_path(directory)
    if not path.is_file():
        return None
    checked = against_majority(records.read_predictions(path), "dev")
    return None if checked is None else checked.learned


def point_score(directory: Path, metric: str) -> tuple[float | None, str | None]:
    """(dev score, record status) of one search point; (None, None) before it ran."""
    record = records.read_record(directory)
    if record is None:
        return None, None
    split = (record.get("data") or {}).get("eval_split")
    if record.get("status") == "ok" and split != "dev":  # e.g. task.eval_split=test among the user's overrides
        raise PeftReproError(f"lr_search: the point {directory} was evaluated on the {split!r} split, not 'dev': "
                             "a learning rate is chosen on the dev split only; remove task.eval_split from "
                             "the overrides")
    value = (record.get("metrics") or {}).get(metric)
    return (float(value) if record.get("status") == "ok" and isinstance(value, (int, float)) else None,
            record.get("status"))


def task_metric(task: str) -> str:
    from peftrepro.tasks import TASKS

    return str(TASKS[task].selection_metric)


@dataclass(frozen=True)
class SearchState:
    """The points of one search so far, by ladder step."""

    scores: dict[int, float | None]  # dev score (None: not run yet, or failed)
    statuses: dict[int, str | None]  # record status
    learned: dict[int, bool]  # beat the dev split's trivial baseline (classification tasks only)


def search_state(task: str, directories: Mapping[int, Path]) -> SearchState:
    metric = task_metric(task)
    state = SearchState({}, {}, {})
    for step, directory in directories.items():
        state.scores[step], state.statuses[step] = point_score(directory, metric)
        if state.scores[step] is not None and (learned := point_learned(directory)) is not None:
            state.learned[step] = learned
    return state


def _under_runs(directory: Path) -> str:
    """A run's folder as `<experiment>/<run key>`, the part of its path every results folder shares."""
    return f"{directory.parent.name}/{directory.name}"


def launch(profile: str, rep: Representative, steps: Sequence[int], extra: Sequence[str],
           launcher: Sequence[str]) -> bool:
    """One Hydra multirun over the pending steps of one representative; True when it succeeded."""
    command = [sys.executable, "-m", "peftrepro.runs", "-m", *point_overrides(profile, rep, extra),
               f"lr_step={','.join(map(str, steps))}", *launcher]
    log.info("lr_search %s/%s: steps %s: %s", rep.task, rep.method, list(steps), " ".join(command[2:]))
    return subprocess.run(command, check=False).returncode == 0


def search(profile: str, rep: Representative, settings: Mapping[str, Any], extra: Sequence[str],
           launcher: Sequence[str]) -> dict[str, Any] | None:
    """Run one (task, method) search to its end; its choice-file entry, or None when a run failed."""
    width, max_points = int(settings["width"]), int(settings["max_points"])
    start = float(settings["start"][rep.method])
    steps = selection.Search({}, width, max_points).initial_steps()
    for _ in range(MAX_ROUNDS):
        directories = {step: point_directory(profile, rep, step, extra) for step in steps}
        points = search_state(rep.task, directories)
        scores, statuses = points.scores, points.statuses
        if statuses and all(status == records.NOT_APPLICABLE for status in statuses.values()):
            record = records.read_record(directories[steps[0]]) or {}
            return {"lr": start, "not_applicable": (record.get("error") or {}).get("message", "")}
        pending = selection.Search(scores, width, max_points, points.learned).pending()
        if not pending:
            runs = {step: _under_runs(directories[step]) for step in scores}
            return selection.summarise(scores, start, width, max_points, runs, points.learned,
                                       metric=task_metric(rep.task),
                                       configuration=" ".join(rep.overrides) or "(the method's defaults)")
        if unread := [step for step in pending if step not in scores]:  # a resumed search may have run them
            steps = sorted({*steps, *unread})
            continue
        if any(statuses.get(step) == "failed" for step in pending):
            log.error("lr_search %s/%s: a point failed (see its record under runs/%s); fix it, then rerun "
                      "(force=true in the overrides retrains it)", rep.task, rep.method, EXPERIMENT)
            return None
        if any(statuses.get(step) == records.UNSCORED for step in pending):  # made with scoring=later|auto
            directory = directories[steps[0]].parent
            raise PeftReproError(f"lr_search {rep.task}/{rep.method}: points are trained but unscored (scoring was "
                                 f"deferred); score them with `peftrepro score runs {directory}` on a machine with "
                                 "Java, then rerun the selection")
        if not launch(profile, rep, pending, extra, launcher):
            return None
        steps = sorted(set(steps) | set(pending))
    raise PeftReproError(f"lr_search {rep.task}/{rep.method}: no decision after {MAX_ROUNDS} rounds")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside `path` (two searches may end at once and share one choice file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_choices(path: Path, profile: str, model: str, chosen: Mapping[tuple[str, str], dict[str, Any]]) -> None:
    """Merge the decided (task, method) entries into the choice file (atomic, under a lock)."""
    with locked(path):
        data = selection.read_choices(path)
        data.update(profile=profile, model=model, split="dev")
        for (task, method), entry in chosen.items():
            data.setdefault("choices", {}).setdefault(task, {})[method] = entry
        data["choices"] = {task: dict(sorted(methods.items())) for task, methods in sorted(data["choices"].items())}
        records.atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftrepro.runs.lr_search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--tasks", required=True, help="comma-separated, e.g. e2e or wikisql,mnli")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every representative)")
    parser.add_argument("--launcher", default="", help="launcher overrides, e.g. 'hydra/launcher=joblib'")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (as ARGS of the tables)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = search_settings(args.profile, args.overrides)
        if not settings["enabled"]:
            print(f"lr_search: profile {args.profile} sets its learning rates itself (lr_selection: false); "
                  "nothing to select")
            return 0
        reps = representatives(settings, args.tasks.split(","), args.methods.split(",") if args.methods else None)
        path = selection.choice_path(records.resolve_path(settings["results_dir"]), args.profile, settings["model"])
        failed = []
        for rep in reps:
            entry = search(args.profile, rep, settings, args.overrides, args.launcher.split())
            if entry is None:
                failed.append(f"{rep.task}/{rep.method}")
                continue
            write_choices(path, args.profile, settings["model"], {(rep.task, rep.method): entry})
            print(f"lr_search {rep.task}/{rep.method}: lr {entry['lr']:g}"
                  + (" (not applicable)" if "not_applicable" in entry else "")
                  + (" (the winner is on the grid's edge: max_points reached)" if entry.get("at_edge") else ""))
    except PeftReproError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if failed:
        print(f"lr_search: not decided: {', '.join(failed)} (a search point failed)", file=sys.stderr)
        return 1
    print(f"lr_search: choices in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
