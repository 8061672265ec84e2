"""A classifier against its trivial baseline: answering every example with the most frequent label.

Shared by the run side (a learning-rate search whose rates all fail to beat it grows its grid,
`peftrepro.selection`) and the report side (a table cell that fails to beat it "did not learn"), so
both judge with one rule: the run's accuracy must exceed the majority class's share of the same
examples by more than LEARNED_Z standard errors of the paired per-example difference.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

LEARNED_Z = 1.96  # two-sided 95 %


@dataclass(frozen=True)
class AgainstMajority:
    """Accuracy and the majority class's share of the same examples, in percent."""

    score: float
    baseline: float
    se: float  # standard error of the paired difference (percent)

    @property
    def learned(self) -> bool:
        return self.score - self.baseline > LEARNED_Z * self.se


def against_majority(rows: Sequence[Mapping[str, Any]], subset: str | None = None) -> AgainstMajority | None:
    """The prediction rows' accuracy against their majority class; rows need "label" and "correct" (a
    classification task's), and `subset` keeps those of one evaluation subset. None without such rows."""
    rows = [row for row in rows if "label" in row and "correct" in row and (subset is None or row.get("subset") == subset)]
    if not rows:
        return None
    majority = Counter(row["label"] for row in rows).most_common(1)[0][0]
    right = [100.0 * bool(row["correct"]) for row in rows]
    base = [100.0 * (row["label"] == majority) for row in rows]
    return AgainstMajority(statistics.mean(right), statistics.mean(base), paired_se([a - b for a, b in zip(right, base)]))


def paired_se(differences: Sequence[float]) -> float:
    """The standard error of the mean of paired differences (infinite with fewer than two)."""
    return statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else math.inf
