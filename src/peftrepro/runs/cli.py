"""The Hydra entry of a run: `python -m peftrepro.runs` (console script `peftrepro-run`).

One job composes conf/config.yaml with the command line's overrides and runs it
(`peftrepro.runs.execute.run_one`); a multirun (`-m`) sweeps, each job a run of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from peftrepro.errors import PeftReproError
from peftrepro.runs.execute import run_one
from peftrepro.runs.plan import CONFIG_DIR
from peftrepro.runs.train import request_stop

log = logging.getLogger("peftrepro.runs")


class RunFailed(CompactHydraException):
    """What the CLI prints for a failed job: one line, the traceback is in the record or the log."""


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """One Hydra job. Returns the primary metric (for Hydra sweepers that optimise it)."""
    # a cancelled or timed-out SLURM job ends like Ctrl-C (recorded, one line), after the step in progress and
    # a save of the training state when it comes while training (a second SIGTERM stops at once)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        record = run_one(cfg, jobs_at_once=_jobs_at_once(), job=_job_number())
    except KeyboardInterrupt:
        print("interrupted: the run's record says status 'interrupted'; the same command resumes the sweep "
              "(finished runs are skipped)", file=sys.stderr)
        sys.exit(130)  # SystemExit passes Hydra's job wrapper: the sweep stops here, as Ctrl-C asks
    except PeftReproError as error:
        message = f"{type(error).__name__}: {error}"
        if _in_multirun():  # Hydra reports only the first failed job of a sweep: log each distinct error
            _log_once(message)
        raise RunFailed(message) from None
    except Exception as error:
        raise RunFailed(f"run failed: {type(error).__name__}: {error} (traceback in the run's record.json "
                        f"and in Hydra's log)") from error
    from peftrepro.tasks import primary_metric  # deferred like the run's own imports of the tasks

    value = (record.get("metrics") or {}).get(primary_metric(str(record.get("task"))))
    return float(value) if isinstance(value, (int, float)) else None


_LOGGED: set[str] = set()  # the errors this process's jobs have logged


def _log_once(message: str) -> None:
    """Log a failed job's error unless an earlier job of this sweep failed with the same words (a bad
    override common to every job, such as a misspelt `+method.key`, is one line, not one per job)."""
    if message in _LOGGED:
        return
    _LOGGED.add(message)
    log.error("%s (the sweep goes on; jobs failing with these same words are not logged again)", message)


def _interrupt(signum: int, frame: object) -> None:
    if not request_stop():  # not training (or asked twice): stop now
        raise KeyboardInterrupt


def _jobs_at_once() -> int:
    """Runs the launcher runs side by side on this machine: joblib's n_jobs (-1: one per core), else 1
    (the basic launcher runs one at a time; a SLURM job is one run on its own allocation)."""
    from hydra.core.hydra_config import HydraConfig

    if not _in_multirun():
        return 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if not isinstance(n_jobs, int) or n_jobs == 0:
        return 1
    return (os.cpu_count() or 1) if n_jobs < 0 else n_jobs


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _job_number() -> int | None:
    """This job's number in a multirun (which GPU it takes first: peftrepro.runs.devices), else None."""
    from hydra.core.hydra_config import HydraConfig

    return int(HydraConfig.get().job.num) if _in_multirun() else None


def main() -> None:
    """Console script `peftrepro-run` (same arguments as `python -m peftrepro.runs`)."""
    hydra_main()
