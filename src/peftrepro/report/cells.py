"""Records -> cells: each table spec's cells (mean, spread, seeds, paper value, status) from the run
records of one experiment and profile, and `build_table`, which reads the records and summarises.

Per experiment and run key the latest record (`created_at`) wins; per cell and seed the latest run
(a later config replaces an older one, never averages with it). A cell also carries what the claims
need: its per-example scores (accuracies), its bootstrap resamples (E2E), and whether a run of it
did not learn (`peftrepro.report.baselines`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from peftrepro.report.baselines import Learning, learning_check
from peftrepro.report.devices import DeviceGap, device_gaps, device_pairs
from peftrepro.report.paper import load_paper
from peftrepro.report.records import (
    BASELINES_EXPERIMENT,
    CORPUS_METRICS,
    LR_SEARCH_EXPERIMENT,
    ExampleScores,
    Problem,
    Record,
    load_records,
    plural,
)
from peftrepro.report.specs import COUNT_KEYS, TABLES, TableSpec
from peftrepro.runs.records import NOT_APPLICABLE, UNSCORED, copied_from

SUMMARY_COLUMNS = ("row", "column", "mean", "std", "sampling_se", "examples", "n", "seeds", "values",
                   "problems", "paper", "paper_printed", "paper_ref", "status", "hardware", "metric",
                   "did_not_learn", "baseline", "resampled")


@dataclass
class TableResult:
    spec: TableSpec
    cells: pd.DataFrame        # SUMMARY_COLUMNS, indexed by (row, column)
    records: list[Record]      # the records placed in this table
    unplaced: list[Record]     # records of this experiment that match no cell
    expected_seeds: list[int]
    problems: list[Problem]    # unreadable record files under runs/<table>/
    superseded: int            # records replaced by a later record of the same run key (this table)
    replaced: int = 0          # runs replaced by a later run of the same cell and seed (other run key)
    other_profiles: list[str] = field(default_factory=list)  # profiles with records, not tabulated here
    profile: str | None = None  # the profile tabulated (None: no record and none asked for)
    # (row, column) -> run keys of the records that give the cell its value, one per seed
    sources: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    baselines: list[Record] = field(default_factory=list)  # the zero-shot runs of the same profile
    lr_search: list[Record] = field(default_factory=list)  # the learning-rate selection's runs (same profile)
    learning: dict[str, Learning] = field(default_factory=dict)  # run key -> against its trivial baseline
    device_gaps: tuple[DeviceGap, ...] = ()  # offsets between kinds of device, from the same runs on both

    def stats(self, row: str, column: str) -> pd.Series:
        return self.cells.loc[(row, column)]

    @property
    def metric_cells(self) -> pd.DataFrame:
        """The cells holding a task metric (parameter counts and sizes come with every run of a row)."""
        cells = self.cells
        return cells[~cells["row"].isin(COUNT_KEYS) & ~cells["column"].isin(COUNT_KEYS)]

    def cells_of(self, run_key: str) -> list[tuple[str, str]]:
        """The metric cells a run gives its value to (parameter counts and measurements aside)."""
        return [cell for cell, keys in self.sources.items()
                if run_key in keys and isinstance(self.cells.loc[cell, "metric"], str)]

    def cell_records(self, row: str, column: str) -> list[Record]:
        """The records that give this cell its value (one per seed)."""
        keys = self.sources.get((row, column), [])
        return [record for record in self.records if record.run_key in keys]

    @property
    def incomplete(self) -> pd.DataFrame:
        return self.cells[self.cells["status"].isin(["missing", "failed", "partial", "unscored"])]


def summarise(spec: TableSpec, records: Sequence[Record], expected_seeds: Sequence[int] | None,
              problems: Sequence[Problem] = (), superseded: int = 0,
              paper: pd.DataFrame | None = None, baselines: Sequence[Record] = ()) -> TableResult:
    """Cells of `spec` from `records` (already filtered to one experiment/profile); `baselines`: the
    zero-shot runs that tell a run that did not learn (`learning_check`)."""
    paper = load_paper() if paper is None else paper
    paper_index = paper.set_index(["table", "row", "column"])
    placed, unplaced, rows, checked = [], [], [], {}
    for record in records:
        observations = spec.observe(record)
        if observations is None:
            unplaced.append(record)
            continue
        placed.append(record)
        learning = checked[record.run_key] = learning_check(record, baselines)
        rows += [dict(row=o.row, column=o.column, value=o.value, sampling_se=o.sampling_se,
                      examples=o.examples, problem=o.problem, seed=record.seed, status=record.status,
                      error_type=record.error_type, created_at=record.created_at, key=record.run_key,
                      task=record.task, hardware=record.hardware, metric=o.metric,
                      learning=learning if o.metric else None,
                      resampled=_resampled(record, o.metric))
                 for o in observations]
    columns = ["row", "column", "value", "sampling_se", "examples", "problem", "seed", "status", "error_type",
               "created_at", "key", "task", "hardware", "metric", "learning", "resampled"]
    obs = pd.DataFrame(rows, columns=columns)
    # One value per cell, seed and task (parameter cells gather both tasks): a run whose config
    # changed since (a new run key for the same cell, e.g. after a code or profile change)
    # replaces the older one, never averages with it.
    latest = obs.sort_values("created_at", kind="stable").drop_duplicates(
        ["row", "column", "seed", "task"], keep="last")
    replaced_keys = set(obs["key"]) - set(latest["key"])
    placed = [r for r in placed if r.run_key not in replaced_keys]
    obs = latest
    seeds = sorted(expected_seeds) if expected_seeds else sorted({r.seed for r in placed if r.seed is not None})
    lines = [_cell(spec, axis_row.key, axis_col.key, obs, seeds, paper_index)
             for axis_row in spec.rows for axis_col in spec.columns]
    cells = pd.DataFrame(lines, columns=list(SUMMARY_COLUMNS)).set_index(["row", "column"], drop=False)
    sources = {cell: list(keys) for cell, keys in obs[obs["value"].notna()].groupby(["row", "column"])["key"]}
    return TableResult(spec, cells, placed, unplaced, seeds, list(problems), superseded, len(replaced_keys),
                       sources=sources, baselines=list(baselines),
                       learning={key: found for key, found in checked.items() if found and key not in replaced_keys})


def _cell(spec: TableSpec, row: str, column: str, obs: pd.DataFrame, seeds: Sequence[int],
          paper_index: pd.DataFrame) -> dict[str, Any]:
    ref = spec.paper_ref(row, column)
    paper_value, paper_printed = None, None
    if ref is not None and ref in paper_index.index:
        hit = paper_index.loc[ref]
        paper_value, paper_printed = float(hit["value"]), str(hit["printed"])
    mine = obs[(obs["row"] == row) & (obs["column"] == column)]
    good = mine[mine["value"].notna()].sort_values("seed", kind="stable")  # values in seed order
    values = good["value"].astype(float)
    got = sorted({int(s) for s in good["seed"].dropna()})
    problems = sorted(set(mine.loc[mine["value"].isna(), "problem"].dropna()))
    status = _status(spec, row, column, mine, good, got, seeds)
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    # every seed is scored on the same examples, so their sampling error does not average out
    sampling = good["sampling_se"].dropna().astype(float)
    sampling_se = float((sampling ** 2).mean() ** 0.5) if len(sampling) == len(good) > 0 else math.nan
    checks = [(int(seed), learning) for seed, learning in zip(good["seed"], good["learning"]) if learning]
    return dict(row=row, column=column, mean=float(values.mean()) if len(values) else math.nan, std=std,
                sampling_se=sampling_se, examples=_mean_example_scores(list(good["examples"])),
                n=len(values), seeds=got, values=list(values), problems=problems, paper=paper_value,
                paper_printed=paper_printed, paper_ref=" / ".join(ref) if ref else None, status=status,
                hardware=sorted(set(good["hardware"])), metric=next(iter(good["metric"].dropna()), None),
                did_not_learn=[f"seed {seed}: {learning}" for seed, learning in sorted(checks) if not learning.learned],
                baseline=checks[0][1] if checks else None, resampled=_mean_resampled(list(good["resampled"])))


@dataclass(frozen=True)
class Resampled:
    """A corpus metric on each bootstrap resample of the evaluated MRs (peftrepro.report.resampling), for a run
    or (mean over seeds) a cell. `fingerprint` names the MRs: the resamples are drawn by position, so
    only cells scored on the same MRs in the same order pair."""

    fingerprint: str
    values: Any  # numpy array, one value per resample
    # a cell of n ≥ 2 seeds: the mean over resamples of the seeds' variance (each seed's resamples
    # centred on their own mean) / n, the seed noise in `values`' spread (see ExampleScores.seed_noise)
    seed_noise: float = 0.0


def _resampled(record: Record, metric: str | None) -> Resampled | None:
    values = record.resampled(metric) if metric in CORPUS_METRICS else None
    return None if values is None else Resampled(str(record.eval_fingerprint()), values)


def _mean_resampled(runs: Sequence[Resampled | None]) -> Resampled | None:
    """Per resample, the mean over the cell's seeds; None unless every seed has them, on the same MRs."""
    if not runs or any(run is None for run in runs) or len({run.fingerprint for run in runs}) > 1:
        return None
    per_seed = np.stack([run.values for run in runs])
    centred = per_seed - per_seed.mean(axis=1, keepdims=True)  # each seed's resamples about their own mean
    return Resampled(runs[0].fingerprint, per_seed.mean(axis=0), _seed_noise(centred))


def _mean_example_scores(runs: Sequence[ExampleScores | None]) -> ExampleScores | None:
    """Per example, the mean score over the cell's seeds; None unless every seed scored the same examples."""
    if not runs or any(run is None for run in runs) or len({run.fingerprint for run in runs}) > 1:
        return None
    per_seed = np.array([run.scores for run in runs], dtype=float)
    return ExampleScores(runs[0].fingerprint, tuple(per_seed.mean(axis=0).tolist()), _seed_noise(per_seed))


def _seed_noise(per_seed: Any) -> float:
    """mean over columns of var over seeds (rows) / n: the seed noise in the spread of the column means."""
    n = per_seed.shape[0]
    return float(per_seed.var(axis=0, ddof=1).mean() / n) if n > 1 else 0.0


# a cell whose runs all have one of these record statuses shows it (rendered "n/a" / "—")
FINAL_CELL_STATUS = {NOT_APPLICABLE: "n/a", UNSCORED: "unscored"}


def _status(spec: TableSpec, row: str, column: str, mine: pd.DataFrame, good: pd.DataFrame, got: list[int],
            seeds: Sequence[int]) -> str:
    if not spec.applies(row, column):
        return "n/a"
    if mine.empty:
        return "missing"
    if good.empty:  # every run of the cell is "not_applicable" (e.g. BitFit, no biases), "unscored" or failed
        statuses = set(mine["status"])
        return FINAL_CELL_STATUS.get(statuses.pop(), "failed") if len(statuses) == 1 else "failed"
    if row in COUNT_KEYS or column in COUNT_KEYS:  # counts and sizes: one per run, the seed spread is irrelevant
        return "ok"
    return "partial" if set(seeds) - set(got) else "ok"


def select_profile(records: Sequence[Record], profile: str | None) -> tuple[list[Record], str | None]:
    """Records of one profile: the given one, else that of the latest record (never mixed)."""
    if not records:
        return [], profile
    chosen = profile or max(records, key=lambda r: r.created_at).profile
    return [r for r in records if r.profile == chosen], chosen


def build_table(spec: TableSpec, runs_dir: Path, profile: str | None = None,
                seeds: Sequence[int] | None = None) -> TableResult:
    records, problems, superseded = load_records(runs_dir)
    of_table = [r for r in records if r.experiment == spec.name]
    mine, chosen = select_profile(of_table, profile)
    # an unreadable record has no readable experiment: its folder (runs/<experiment>/...) says where it belongs
    own_problems = [p for p in problems if p.path.relative_to(runs_dir).parts[0] == spec.name]
    same_profile = [r for r in records if r.profile == chosen]
    result = summarise(spec, mine, seeds, own_problems, superseded[spec.name],
                       baselines=[r for r in same_profile if r.experiment == BASELINES_EXPERIMENT])
    result.other_profiles = sorted({r.profile for r in of_table} - {chosen})
    result.profile = chosen
    result.lr_search = [r for r in same_profile if r.experiment == LR_SEARCH_EXPERIMENT]
    result.device_gaps = device_gaps(device_pairs(runs_dir, chosen, records))
    return result


def all_tables(runs_dir: Path, profile: str | None, seeds: Sequence[int] | None,
               names: Sequence[str] | None = None) -> dict[str, TableResult]:
    """The named tables (default: every one). A table with no run yet expects what the tables with runs
    agree on: without seeds, the seeds they all have (so its cells count as empty, not as complete with
    no seed expected), and without a profile, theirs (so its missing cells name the make command that
    fills them); finding those reads every table."""
    names = list(names or TABLES)
    if seeds and profile:
        return {name: build_table(TABLES[name], runs_dir, profile, seeds) for name in names}
    every = {name: build_table(spec, runs_dir, profile, seeds) for name, spec in TABLES.items()}
    with_runs = [result for result in every.values() if result.records]
    if not with_runs:
        return {name: every[name] for name in names}
    common = seeds or sorted(set.intersection(*(set(result.expected_seeds) for result in with_runs)))
    profiles = {result.profile for result in with_runs}
    agreed = profile or (profiles.pop() if len(profiles) == 1 else None)
    return {name: build_table(TABLES[name], runs_dir, agreed, common) if not every[name].records
            else every[name] for name in names}


@dataclass(frozen=True)
class SeedSpread:
    """max - min over one cell's seeds (paper units); `spiked`: a seed's training loss spiked; `failed`: a
    run did not learn or failed to train (it widens the cell by failing, which is not seed noise)."""

    value: float
    spiked: bool
    failed: bool = False


def seed_spreads(results: Iterable[TableResult], metric: str) -> list[SeedSpread]:
    """The seed spread of every cell of `metric` with several seeds, those with a run that did not learn
    or failed to train marked `failed` (its table labels it)."""
    spreads, seen = [], set()
    for result in results:
        cells = result.metric_cells
        for (row, column), stats in cells[cells["metric"] == metric].iterrows():
            runs = result.cell_records(row, column)
            trained = not stats["did_not_learn"] and not any(r.failed_training for r in runs)
            # a cell another table copied (peftrepro.runs.reuse) is one spread, not one per table; a stale
            # copy (its original rerun since) has other values, so it stays a spread of its own
            originals = (frozenset(copied_from(r.raw) or (r.experiment, r.run_key) for r in runs),
                         tuple(stats["values"]))
            if stats["n"] > 1 and originals not in seen:
                seen.add(originals)
                spreads.append(SeedSpread(max(stats["values"]) - min(stats["values"]),
                                          any(r.loss_spike for r in runs), not trained))
    return spreads


def largest_spread_text(spreads: Sequence[SeedSpread], unit: str, where: str = "") -> str:
    """"up to 2.8 points here", with a larger spread of a cell whose training loss spiked set apart
    after it: one unstable run is not the seed noise of the settings that trained smoothly. Cells with
    a failed fit are left out, and counted."""
    failed = sum(s.failed for s in spreads)
    left_out = f", leaving out {plural(failed, 'cell')} with a run that did not learn or failed to train" if failed else ""
    spreads = [s for s in spreads if not s.failed]
    if not spreads:
        return f"an unknown amount{where} (every cell with several seeds has a run that did not learn or failed to train)"
    return _largest_spread(spreads, unit, where) + left_out


def steady_spread(spreads: Sequence[SeedSpread]) -> float | None:
    """The largest seed spread of the cells that trained smoothly (no spike, no failed fit); None without any."""
    return max((s.value for s in spreads if not s.spiked and not s.failed), default=None)


def _largest_spread(spreads: Sequence[SeedSpread], unit: str, where: str) -> str:
    steady = steady_spread(spreads)
    wider = [s.value for s in spreads if s.spiked and (steady is None or s.value > steady)]
    spike = ("in a cell where a seed's training loss spiked; its table lists the spike" if len(wider) == 1 else
             f"in {len(wider)} cells where a seed's training loss spiked; their tables list the spikes")
    if steady is None:
        return f"up to {max(wider):.1f} {unit}{where} ({spike})"
    aside = f" ({'' if len(wider) == 1 else 'up to '}{max(wider):.1f} {spike})" if wider else ""
    return f"up to {steady:.1f} {unit}{where}{aside}"


def extra_seed_runs(result: TableResult) -> list[Record]:
    """The runs of a seed beyond those every cell should have that a cell shows (a failed run shows in none)."""
    return [r for r in result.records
            if r.seed is not None and r.seed not in result.expected_seeds and result.cells_of(r.run_key)]
