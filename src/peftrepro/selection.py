"""Learning-rate selection rules, shared by the run side (which runs the search and writes the choice)
and the report side (which shows each table's grid, dev scores and choice): no I/O beyond the
choice file, no import of either side.

The grid is a ladder of learning rates, 1 and 3 times a power of ten (…, 1e-4, 3e-4, 1e-3, 3e-3, …):
rung k is 10^(k/2) rounded to one significant digit, so two rungs are a factor of about 3 apart and
every value prints short. A search starts with `width` rungs centred on the method's start value;
while the best dev score sits on the window's edge, the window grows by one rung on that side, up
to `max_points` rungs. Ties go to the smaller learning rate (the more conservative choice).
Where the task has a trivial baseline on the dev split (a classifier's majority class), a window in
which no rate beats it has no winner worth the name: it grows by one rung on both sides (the better
edge first when only one rung is left) until a rate learns or the grid holds `max_points` rungs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from peftrepro.errors import ConfigError

CHOICE_DIR = "learning_rates"  # under the results folder: <results>/learning_rates/<profile>-<model>.json


def on_ladder(lr: float) -> bool:
    return float(lr) > 0 and math.isclose(rung_value(round(2 * math.log10(float(lr)))), float(lr), rel_tol=1e-9)


def rung_of(lr: float) -> int:
    """The ladder rung of a learning rate that lies on it (1 or 3 times a power of ten)."""
    if not on_ladder(lr):
        raise ConfigError(f"learning rate {lr!r} is not on the ladder (1 or 3 times a power of ten, e.g. 3e-4, "
                          "1e-3): lr_search.start takes such values")
    return round(2 * math.log10(float(lr)))


def rung_value(rung: int) -> float:
    """10^(rung/2) to one significant digit: even rungs 1e-k, odd rungs 3e-k."""
    return float(f"{(1 if rung % 2 == 0 else 3)}e{rung // 2}")


def ladder(start: float, step: int) -> float:
    """The learning rate `step` rungs from `start` (Hydra resolver `lr_ladder`)."""
    return rung_value(rung_of(start) + int(step))


@dataclass(frozen=True)
class Search:
    """The state of one (task, method) search: its dev score per step (None: not run yet or failed)."""

    scores: Mapping[int, float | None]
    width: int = 3
    max_points: int = 6
    # step -> whether its run beat the dev split's trivial baseline; a step not in it counts as learned
    # (tasks without such a baseline on the dev split: E2E, WikiSQL)
    learned: Mapping[int, bool] = field(default_factory=dict)

    def initial_steps(self) -> list[int]:
        half = self.width // 2
        return list(range(-half, self.width - half))

    def pending(self) -> list[int]:
        """Steps still to run: the first window's, then one rung past a winning edge (past both edges
        while no rate learned)."""
        steps = sorted(set(self.initial_steps()) | set(self.scores))
        missing = [step for step in steps if self.scores.get(step) is None]
        if missing:
            return missing
        best = self.best_step()
        if len(steps) >= self.max_points:
            return []
        if not self.any_learned:
            # one rung past each edge, the side whose edge scored better first (ties: the smaller rates)
            sides = sorted([(steps[0] - 1, steps[0]), (steps[-1] + 1, steps[-1])],
                           key=lambda side: -ranked(self.scores[side[1]]))
            return sorted(step for step, _ in sides[: self.max_points - len(steps)])
        if best == steps[0]:
            return [steps[0] - 1]
        if best == steps[-1]:
            return [steps[-1] + 1]
        return []

    def best_step(self) -> int:
        """The step of the highest dev score; ties to the smaller learning rate."""
        scored = {step: score for step, score in self.scores.items() if score is not None}
        if not scored:
            raise ValueError("no dev score yet")
        return max(sorted(scored), key=lambda step: (ranked(scored[step]), -step))

    @property
    def any_learned(self) -> bool:
        """Some scored rate beat the dev split's trivial baseline (or the task has none)."""
        return any(self.learned.get(step, True) for step, score in self.scores.items() if score is not None)

    @property
    def decided(self) -> bool:
        return bool(self.scores) and not self.pending()

    @property
    def at_edge(self) -> bool:
        """The winner is still on the edge of the grid (the grid hit max_points)."""
        steps = sorted(s for s, v in self.scores.items() if v is not None)
        return self.decided and self.best_step() in (steps[0], steps[-1])


def replay(scores: Mapping[int, float | None], width: int, max_points: int,
           learned: Mapping[int, bool] | None = None) -> Search:
    """The search the selection would see given the points run so far ({step: score, None if it
    failed}; `learned` as in `Search`): its first window, grown as `Search.pending` grows it while
    those rungs were run. Points run outside it (under an earlier start value) are not part of it."""
    steps = set(Search({}, width, max_points).initial_steps())
    while True:
        state = Search({step: scores.get(step) for step in steps}, width, max_points,
                       {step: flag for step, flag in (learned or {}).items() if step in steps})
        grown = [step for step in state.pending() if step not in steps and step in scores]
        if not grown:
            return state
        steps.update(grown)


def ranked(score: float) -> float:
    """A dev score as the selection ranks it: a non-finite one (a diverged run's NaN) ranks last."""
    return score if math.isfinite(score) else -math.inf


# ---------------------------------------------------------------- the choice file

def choice_path(results_dir: str | Path, profile: str, model: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{profile}-{model}")
    return Path(results_dir) / CHOICE_DIR / f"{safe}.json"


def read_choices(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise ConfigError(f"{path}: not valid JSON ({error}); delete it and run `make select-lr` again") from error


def selected_lr(path: Path, task: str, method: str) -> float:
    """The learning rate the selection chose for (task, method), from the choice file at `path`."""
    entry = (read_choices(path).get("choices") or {}).get(task, {}).get(method)
    if entry is None:
        raise ConfigError(f"no learning rate has been selected for method {method!r} on task {task!r} "
                          f"({path} has none): run `make select-lr` with the same PROFILE and ARGS first, "
                          "or set train.lr explicitly")
    return float(entry["lr"])


def summarise(scores: Mapping[int, float | None], start: float, width: int, max_points: int,
              runs: Mapping[int, str] | None = None, learned: Mapping[int, bool] | None = None,
              **about: Any) -> dict[str, Any]:
    """One choice-file entry: the chosen lr, whether it sits on the grid's edge, whether any rate beat the
    dev split's trivial baseline (where the task has one), and the grid, each point with the run it was
    scored by (`runs`: step -> its folder under runs/); `about` says what was scored (metric, the
    configuration's overrides)."""
    search = Search(scores, width, max_points, learned or {})
    best = search.best_step()
    grid = [{"lr": ladder(start, step), "dev": score, **({"run": runs[step]} if runs and step in runs else {}),
             **({"learned": learned[step]} if learned and step in learned else {})}
            for step, score in sorted(scores.items())]
    return {"lr": ladder(start, best), "at_edge": search.at_edge,
            **({"none_learned": True} if not search.any_learned else {}), **about, "grid": grid}
