"""The E2E scorer's ROUGE-L as an `evaluate` metric.

Loaded from the package (never the hub) by peftrepro.metrics.load_metric("rouge_l").
"""

import evaluate

from peftrepro.metrics.e2e import evaluate_support


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate_support.metric_info("rouge_l")

    def _compute(self, predictions, references):
        return evaluate_support.compute("rouge_l", predictions, references)
