"""The E2E scorer's METEOR as an `evaluate` metric.

Loaded from the package (never the hub) by peftrepro.metrics.load_metric("meteor").
"""

import evaluate

from peftrepro.metrics.e2e import evaluate_support


class Meteor(evaluate.Metric):
    def _info(self):
        return evaluate_support.metric_info("meteor")

    def _compute(self, predictions, references):
        return evaluate_support.compute("meteor", predictions, references)
