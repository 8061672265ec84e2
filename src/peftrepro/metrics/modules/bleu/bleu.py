"""The E2E scorer's BLEU as an `evaluate` metric.

Loaded from the package (never the hub) by peftrepro.metrics.load_metric("bleu").
"""

import evaluate

from peftrepro.metrics.e2e import evaluate_support


class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate_support.metric_info("bleu")

    def _compute(self, predictions, references):
        return evaluate_support.compute("bleu", predictions, references)
