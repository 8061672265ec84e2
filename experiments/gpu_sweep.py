"""`python -m peftrepro.run` with a deadline: the Hydra entry point of the sweep stage of
experiments/gpu_session.py (the lent GPU, where device time is counted to the second).

    PEFTGPU_DEADLINE=<epoch s> python experiments/gpu_sweep.py -m experiment=table_rank profile=mini \\
        seed=0,1 hydra/launcher=joblib hydra.launcher.n_jobs=6

Same config directory, same config name, same overrides as `make table-rank` composes, and each job
runs the suite's own task function (`peftrepro.run.hydra_main`), so a job computes the same run key,
writes the same record and skips a finished run exactly as `make` does. The one addition: a job
does not START when it could not finish before the deadline (the gate below); it logs that and
returns, so a sweep cut by the deadline leaves no half-run GPU work behind, only runs not begun,
which the next `make` (or session) picks up as missing. Runs that cost nothing (finished, or
copied from an equivalent run by peftrepro.reuse) pass the gate at any time.

Environment (set by gpu_session.py):
  PEFTGPU_DEADLINE        epoch seconds by which every started run must have ended (unset: no gate)
  PEFTGPU_SINCE           epoch seconds the session started: runs finished since then time the gate
  PEFTGPU_RUN_ESTIMATE_S  a run's duration until one of the same task has finished (default 90)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

import hydra
from omegaconf import DictConfig

from peftrepro import run as suite_run
from peftrepro.records import RECORD_FILE, resolve_path

log = logging.getLogger("peftrepro.gpu_sweep")

DEFAULT_ESTIMATE_S = 90.0
MARGIN = 1.15  # a run started next to others may take a little longer than the slowest seen so far


def run_estimate_s(records: Iterable[dict[str, Any]], task: str, default_s: float) -> float:
    """How long the next `task` run will take: the slowest finished run of that task in this session,
    else of any task, else `default_s` (runs in parallel slow each other; measured times include it)."""
    seconds = [(r.get("task"), (r.get("timings") or {}).get("total_s")) for r in records if r.get("status") == "ok"]
    seconds = [(t, float(s)) for t, s in seconds if isinstance(s, (int, float))]
    same_task = [s for t, s in seconds if t == task]
    pool = same_task or [s for _, s in seconds]
    return MARGIN * max(pool) if pool else default_s


def may_start(now: float, deadline: float | None, estimate_s: float) -> bool:
    """Start a run only if it should end before the deadline (no deadline: always)."""
    return deadline is None or now + estimate_s <= deadline


def session_records(runs_dir: Path, since: float) -> list[dict[str, Any]]:
    """Records written since `since` (epoch s) under runs_dir/<experiment>/<key>/record.json."""
    found = []
    for path in runs_dir.glob(f"*/*/{RECORD_FILE}"):
        try:
            if path.stat().st_mtime >= since:
                found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # being replaced right now, or unreadable: no timing from it
    return found


def costs_nothing(cfg: DictConfig) -> bool:
    """A run already finished or trained (unscored), or one `peftrepro.run` would copy from an equivalent
    run of another table (peftrepro.reuse): it takes no GPU time, so the deadline does not hold it back."""
    from peftrepro import records, reuse

    try:
        plan = suite_run.plan_run(cfg)
        if records.is_finished(plan.directory) or records.status_of(plan.directory) == records.UNSCORED:
            return True  # skipped, or (unscored) scored from its saved predictions: no training
        return bool(plan.config.get("reuse_equivalent_runs", True)) and reuse.find_equivalent(plan) is not None
    except Exception:  # a config error surfaces in the run itself; here it only means "not free"
        return False


def _float_env(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else None


@hydra.main(config_path=str(suite_run.CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    deadline = _float_env("PEFTGPU_DEADLINE")
    if deadline is not None:
        runs_dir = resolve_path(str(cfg.results_dir)) / "runs"
        since = _float_env("PEFTGPU_SINCE") or 0.0
        default_s = _float_env("PEFTGPU_RUN_ESTIMATE_S") or DEFAULT_ESTIMATE_S
        estimate = run_estimate_s(session_records(runs_dir, since), str(cfg.task.name), default_s)
        if not may_start(time.time(), deadline, estimate) and not costs_nothing(cfg):
            log.warning("deadline: not starting this run (%.0f s left, a run takes ~%.0f s)",
                        deadline - time.time(), estimate)
            return None
    # the suite's own task function, undecorated: the same run, record and skip as `make`
    return suite_run.hydra_main.__wrapped__(cfg)


if __name__ == "__main__":
    main()
