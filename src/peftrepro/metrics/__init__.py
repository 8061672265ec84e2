"""Metrics: the official E2E NLG scorer's five metrics, also as `evaluate` modules.

(WikiSQL / MNLI metrics live with their tasks, see `peftrepro.metrics.wikisql`.)

The E2E names (`score_e2e`, `score_e2e_files`, `E2E_METRICS`) load on first use: the E2E stack
needs pycocoevalcap (and Java), which WikiSQL and MNLI runs do not, and importing
`peftrepro.metrics.wikisql` runs this file. So a machine without pycocoevalcap (or Java) can still
run Tables 4, 5 and 6.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftrepro.errors import ConfigError

MODULES_DIR = Path(__file__).parent / "modules"
_E2E_NAMES = ("E2E_METRICS", "score_e2e", "score_e2e_files", "score_e2e_segments")


def __getattr__(name: str) -> Any:
    """`peftrepro.metrics.score_e2e` etc., imported from `peftrepro.metrics.e2e` when first asked for."""
    if name in _E2E_NAMES:
        from peftrepro.metrics import e2e

        return getattr(e2e, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_metric(name: str):
    """An `evaluate` metric module shipped inside this package (never fetched from the hub):
    one of bleu, nist, meteor, rouge_l, cider, each computed as the E2E scorer does."""
    import evaluate  # deferred: importing evaluate pulls in datasets (seconds)

    from peftrepro.metrics.e2e import E2E_METRICS

    if name not in E2E_METRICS:
        raise ConfigError(f"Unknown metric {name!r}; the packaged metric modules are: {', '.join(E2E_METRICS)}.")
    return evaluate.load(str(MODULES_DIR / name))


__all__ = ["E2E_METRICS", "MODULES_DIR", "load_metric", "score_e2e", "score_e2e_files", "score_e2e_segments"]
