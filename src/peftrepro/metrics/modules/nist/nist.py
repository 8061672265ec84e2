"""The E2E scorer's NIST as an `evaluate` metric.

Loaded from the package (never the hub) by peftrepro.metrics.load_metric("nist").
"""

import evaluate

from peftrepro.metrics.e2e import evaluate_support


class Nist(evaluate.Metric):
    def _info(self):
        return evaluate_support.metric_info("nist")

    def _compute(self, predictions, references):
        return evaluate_support.compute("nist", predictions, references)
