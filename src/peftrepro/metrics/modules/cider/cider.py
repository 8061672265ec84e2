"""The E2E scorer's CIDEr-D as an `evaluate` metric.

Loaded from the package (never the hub) by peftrepro.metrics.load_metric("cider").
"""

import evaluate

from peftrepro.metrics.e2e import evaluate_support


class Cider(evaluate.Metric):
    def _info(self):
        return evaluate_support.metric_info("cider")

    def _compute(self, predictions, references):
        return evaluate_support.compute("cider", predictions, references)
