"""Experiment trackers: none (the record is the result) or wandb, streaming a run's losses and metrics.
A tracker is always finished, also when its run fails, so the runs of a sweep never merge (wandb #1314)."""

from __future__ import annotations

from peftrepro.paths import resolve_path
from peftrepro.runs.plan import RunPlan


class Tracker:
    """No-op tracker (logger=none); `WandbTracker` streams to wandb."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self, exit_code: int) -> None:
        pass


class WandbTracker(Tracker):
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


def make_tracker(plan: RunPlan) -> Tracker:
    return WandbTracker(plan) if plan.config["logger"].get("name") == "wandb" else Tracker()
