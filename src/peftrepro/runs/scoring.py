"""Scoring saved predictions: the second half of a run made with `scoring: later` (or `auto` without Java).

The E2E scorer needs Java (METEOR and the PTB tokenizer of the official scorer); a GPU node may have
none. There a run trains and decodes with `scoring=auto`: its record says "unscored" and its
predictions file holds everything scoring needs (each E2E row carries its references). On a
machine with Java the saved predictions are then scored and the record becomes "ok", keeping
where and with what code it trained and adding where and when it was scored (`scoring`):

    python -m peftrepro.runs.scoring results/runs     # every unscored run below the folder
    make table-e2e                                # the same for that table's runs, then the table

Nothing is trained or decoded again; the predictions file is rewritten with the same rows plus what
scoring adds to each (E2E: each MR's share of the corpus scores), before the record.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from peftrepro.errors import DataError, PeftReproError
from peftrepro.runs import envinfo, records

log = logging.getLogger("peftrepro.runs.scoring")


class ScoringToolsMissing(PeftReproError):
    """This machine lacks a tool the task's official scorer needs."""


def can_defer(task: Any) -> bool:
    """Whether `task` can decode now and score later (`peftrepro.interfaces.DeferredScoring`)."""
    return callable(getattr(task, "score", None)) and callable(getattr(task, "missing_scoring_tools", None))


def score_saved(directory: Path, task: Any | None = None) -> dict[str, Any]:
    """Score the saved predictions of the unscored run in `directory`; return the "ok" record.

    Raises ScoringToolsMissing (nothing written) where the scorer would fall back to an
    approximation, since an unscored run exists to be scored as the paper scored it.
    """
    record = records.read_record(directory)
    if record is None or record.get("status") != records.UNSCORED:
        raise DataError(f"{directory}: no unscored record to score (status "
                        f"{None if record is None else record.get('status')!r})")
    task = task or _task_of(record)
    missing = task.missing_scoring_tools()
    if missing:
        raise ScoringToolsMissing(f"{directory.name}: cannot score {record.get('task')} here: this machine lacks "
                                  f"{', '.join(missing)}; install it, or score on a machine that has it "
                                  "(python -m peftrepro.runs.scoring <runs dir>)")
    began = time.perf_counter()
    metrics, notes, rows = task.score(_read_predictions(records.predictions_path(directory)))
    seconds = time.perf_counter() - began
    records.write_predictions(directory, rows)
    records.predictions_path(directory).with_name(records.LEGACY_PREDICTIONS_FILE).unlink(missing_ok=True)
    epochs = [{**row, **metrics} for row in record.get("metrics_per_epoch") or [{"epoch": None}]]
    scored = {**record, "status": "ok", "metrics": metrics, "metrics_per_epoch": epochs,
              "eval_notes": {**(record.get("eval_notes") or {}), **notes},
              "timings": {**(record.get("timings") or {}), "score_s": seconds},
              "scoring": {"scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "env": envinfo.environment()}}
    records.write_record(directory, scored)
    log.info("scored %s: %s", directory.name, metrics)
    return scored


def _task_of(record: dict[str, Any]) -> Any:
    from peftrepro.tasks import make_task

    task = make_task(str(record.get("task")), None, dict((record.get("config") or {}).get("task") or {}))
    if not can_defer(task):
        raise DataError(f"task {record.get('task')!r} scores while it evaluates; its runs are never unscored")
    return task


def _read_predictions(path: Path) -> list[dict[str, Any]]:
    try:
        return records.read_predictions(path)
    except OSError as error:
        raise DataError(f"{path}: the saved predictions of an unscored run cannot be read ({error}); "
                        "rerun it with force=true") from error
    except ValueError as error:
        raise DataError(f"{path}: not valid JSONL ({error}); rerun the run with force=true") from error


def unscored_runs(root: Path) -> list[Path]:
    """Run folders below `root` (a runs dir, an experiment's folder or one run) whose record is unscored."""
    found = [root] if (root / records.RECORD_FILE).is_file() else [p.parent for p in root.rglob(records.RECORD_FILE)]
    return sorted(d for d in found if records.status_of(d) == records.UNSCORED)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score the saved predictions of every unscored run "
                                                 "(runs made with scoring=later or auto) below the given folders.")
    parser.add_argument("folders", nargs="+", type=Path, help="runs dirs, experiment folders or run folders")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    missing = [str(folder) for folder in args.folders if not folder.is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    failures, busy = 0, []
    runs = [run for folder in args.folders for run in unscored_runs(folder)]
    for run in runs:
        try:
            if not score_claimed(run):
                busy.append(run.name)
        except PeftReproError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
    skipped = f"; {len(busy)} left to the process making them: {', '.join(busy)}" if busy else ""
    print(f"scored {len(runs) - failures - len(busy)} of {len(runs)} unscored run(s){skipped}")
    return 1 if failures else 0


def score_claimed(run: Path) -> bool:
    """Score the unscored run in `run` (results/runs/<experiment>/<key>) while holding its claim, as every
    writer of a run folder does (records.claimed): a forced rerun writing new predictions meanwhile is
    never overwritten by the old ones. False when another process holds the run; True when it is scored
    (or was, by someone else, since it was listed)."""
    with records.claimed(run.parents[2], run.parent.name, run.name) as mine:
        if mine and records.status_of(run) == records.UNSCORED:
            score_saved(run)
        return mine


if __name__ == "__main__":
    sys.exit(main())
