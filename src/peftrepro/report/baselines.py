"""Failed fits: a run against its task's trivial baseline on the same examples.

MultiNLI's baseline is the majority class of the run's own evaluation set; E2E's and WikiSQL's is
the zero-shot run (method `none`, experiment `baselines`) evaluated on the same examples. A run
"did not learn" when its primary score does not beat the baseline by more than LEARNED_Z standard
errors of the paired difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from peftrepro.metrics import majority
from peftrepro.report.paper import to_paper_unit
from peftrepro.report.records import CORPUS_METRICS, PROPORTION_METRICS, Record
from peftrepro.tasks import primary_metric

LEARNED_Z = majority.LEARNED_Z  # one rule for both baselines


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


def learning_check(record: Record, baselines: Sequence[Record]) -> Learning | None:
    """Whether `record` beats its task's trivial baseline on its primary metric by more than LEARNED_Z
    standard errors of the paired difference: MultiNLI, the majority class of its own evaluation set;
    E2E and WikiSQL, the zero-shot run (`baselines`) on the same examples. None where it cannot be
    told (no predictions, or no baseline run on these examples yet)."""
    metric = primary_metric(record.task)
    if record.status != "ok" or metric is None or metric not in record.metrics:
        return None
    if record.task == "mnli":
        return against_majority(record, metric)
    fingerprint = record.eval_fingerprint()
    matching = [b for b in baselines if b.task == record.task and b.status == "ok" and fingerprint
                and b.eval_fingerprint() == fingerprint and same_backbone(b, record)]
    if not matching:
        return None
    baseline = max(matching, key=lambda b: b.created_at)  # the latest, as trivial_baselines takes
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
        se = majority.paired_se([a - b for a, b in zip(ours.scores, theirs.scores)])
    return Learning(score - base > LEARNED_Z * se, score, base, "zero-shot", se)


def same_backbone(a: Record, b: Record) -> bool:
    """Whether two runs start from the same weights (a zero-shot run is another backbone's baseline
    on the same examples too: GPT-2 M and L score the same E2E MRs)."""
    sha_a, sha_b = a.model.get("weights_sha256"), b.model.get("weights_sha256")
    return a.model.get("name") == b.model.get("name") and (sha_a is None or sha_b is None or sha_a == sha_b)


def trivial_baselines(task: str, baselines: Sequence[Record]) -> dict[str, tuple[str, float]]:
    """A task's trivial baseline per backbone from its zero-shot runs alone (before any table run to
    check), backbone name -> (baseline name, value): MultiNLI, the majority class's share of the
    latest zero-shot run's evaluation set; E2E and WikiSQL, that run's score."""
    metric = primary_metric(task)
    runs = [b for b in baselines if b.task == task and b.status == "ok" and metric in b.metrics]
    known: dict[str, tuple[str, float]] = {}
    for run in sorted(runs, key=lambda b: b.created_at, reverse=True):
        backbone = str(run.model.get("name"))
        if backbone in known:
            continue
        if task != "mnli":
            known[backbone] = "zero-shot", to_paper_unit(metric, float(run.metrics[metric]))
        elif (checked := against_majority(run, metric)) is not None:
            known[backbone] = checked.baseline_name, checked.baseline
    return known


def against_majority(record: Record, metric: str) -> Learning | None:
    """A classification run's `metric` against the majority class of the same examples (from its saved
    predictions: MultiNLI's evaluation set, or the dev split of a learning-rate selection's run)."""
    checked = majority.against_majority(record.prediction_rows() or [], PROPORTION_METRICS[metric][1])
    if checked is None:
        return None
    return Learning(checked.learned, checked.score, checked.baseline, "majority class", checked.se)
