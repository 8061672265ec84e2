"""The evaluation-set error of the E2E corpus metrics: a paired bootstrap over MRs, from saved predictions.

Every E2E prediction row keeps its MR's share of the corpus scores (`segment`, written by the task's
scorer): the BLEU/NIST statistics vector, which sums over MRs, and the MR's ROUGE-L, CIDEr and
METEOR segment scores. A resample of the MRs (drawn with replacement, the same resamples for every
run: `resample_counts`) gives each run's corpus BLEU/NIST from the summed vectors and its ROUGE-L /
CIDEr / METEOR as the mean of the segment scores (METEOR's corpus score aggregates its statistics
rather than averaging segment scores: for it the mean stands in). Two cells scored on the same MRs
are compared resample by resample, so the spread of their difference is the evaluation set's error
of the difference, with nothing from the seeds.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np

RESAMPLES = 1000
SEED = 0  # fixed: the same resamples for every run, so the report regenerates byte for byte
CORPUS_FROM_SUMS = {"bleu": 0, "nist": 1}  # position in mteval.scores_from_sums


@lru_cache(maxsize=8)
def resample_counts(n: int) -> np.ndarray:
    """RESAMPLES x n: how often each of n MRs is drawn in each resample (multinomial, seeded)."""
    return np.random.default_rng(SEED).multinomial(n, np.full(n, 1.0 / n), size=RESAMPLES).astype(float)


def resampled_scores(segments: Sequence[dict[str, Any]], metric: str) -> np.ndarray | None:
    """One run's `metric` on each resample of its MRs (raw scale); None where a segment lacks it."""
    from peftrepro.metrics.e2e.mteval import scores_from_sums

    counts = resample_counts(len(segments))
    if metric in CORPUS_FROM_SUMS:
        if any(not segment.get("mteval") for segment in segments):
            return None
        sums = counts @ np.array([segment["mteval"] for segment in segments], dtype=float)
        return np.array([scores_from_sums(list(row))[CORPUS_FROM_SUMS[metric]] for row in sums])
    values = [segment.get(metric) for segment in segments]
    if any(value is None for value in values):
        return None
    return counts @ np.array(values, dtype=float) / len(segments)
