"""The confidence level every interval of the report uses, and its Student's t quantile."""

from __future__ import annotations

import math

from scipy import stats as scipy_stats

CONFIDENCE = 0.95  # two-sided
CONFIDENCE_TEXT = f"{CONFIDENCE * 100:g} %"  # as the pages print it


def quantile(df: float) -> float:
    """The two-sided CONFIDENCE quantile of Student's t with `df` degrees of freedom (normal when infinite)."""
    level = 0.5 + CONFIDENCE / 2
    return float(scipy_stats.norm.ppf(level) if math.isinf(df) else scipy_stats.t.ppf(level, df))
