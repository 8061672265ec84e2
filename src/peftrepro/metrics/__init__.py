"""Metrics: the official E2E NLG scorer's five metrics, also as `evaluate` modules.

(WikiSQL / MNLI metrics live with their tasks, see `peftrepro.metrics.wikisql`.)
"""

from __future__ import annotations

from pathlib import Path

from peftrepro.errors import ConfigError
from peftrepro.metrics.e2e import E2E_METRICS, score_e2e, score_e2e_files

MODULES_DIR = Path(__file__).parent / "modules"


def load_metric(name: str):
    """An `evaluate` metric module shipped inside this package (never fetched from the hub):
    one of bleu, nist, meteor, rouge_l, cider, each computed as the E2E scorer does."""
    import evaluate  # deferred: importing evaluate pulls in datasets (seconds)

    if name not in E2E_METRICS:
        raise ConfigError(f"Unknown metric {name!r}; the packaged metric modules are: {', '.join(E2E_METRICS)}.")
    return evaluate.load(str(MODULES_DIR / name))


__all__ = ["E2E_METRICS", "MODULES_DIR", "load_metric", "score_e2e", "score_e2e_files"]
