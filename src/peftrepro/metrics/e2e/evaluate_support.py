"""What the packaged `evaluate` modules (``peftrepro/metrics/modules/<name>/<name>.py``) share.

The module scripts stay two-method stubs that delegate here, so the metric logic lives in one
importable, tested place. (evaluate picks the first Metric subclass it finds in a script's
namespace, so the scripts import this module, never a base class.)
"""

from __future__ import annotations

import datasets
import evaluate

from peftrepro.metrics.e2e import SINGLE_METRICS

_CITATION = """\
@inproceedings{dusek2018findings,
  title={Findings of the {E2E} {NLG} Challenge},
  author={Du{\\v{s}}ek, Ond{\\v{r}}ej and Novikova, Jekaterina and Rieser, Verena},
  booktitle={Proceedings of the 11th International Conference on Natural Language Generation},
  year={2018}
}
"""

DESCRIPTIONS = {
    "bleu": "Corpus BLEU-4 as MT-Eval v13a (Perl) computes it in the E2E scorer: multi-reference, "
    "case-insensitive, mteval tokenisation, closest reference length, mteval smoothing.",
    "nist": "Corpus NIST-5 as MT-Eval v13a (Perl, as edited in e2e-metrics) computes it: n-gram "
    "information from all references, brevity penalty against the average non-empty reference length.",
    "meteor": "METEOR 1.5 (meteor-1.5.jar, -l en -norm) after the PTB tokenizer, corpus-level; None without Java.",
    "rouge_l": "ROUGE-L (LCS F-measure, beta 1.2, precision and recall each best over references) after "
    "the PTB tokenizer, averaged over MRs (pycocoevalcap).",
    "cider": "CIDEr-D as pycocoevalcap computes it in the E2E scorer (n=4, sigma=6, clipping, x10), "
    "idf from the evaluated references, after the PTB tokenizer.",
}

_INPUTS = """
Args:
    predictions: list of str, one generated text per MR.
    references: list of list of str, all human references of each MR.
Returns:
    {"<metric>": float} on the E2E scorer's raw scale (e.g. BLEU 0.6593).
"""


def metric_info(name: str) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=DESCRIPTIONS[name],
        citation=_CITATION,
        inputs_description=_INPUTS,
        features=datasets.Features(
            {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
        ),
        reference_urls=["https://github.com/tuetschek/e2e-metrics"],
    )


def compute(name: str, predictions: list[str], references: list[list[str]]) -> dict[str, float | None]:
    return {name: SINGLE_METRICS[name](list(predictions), [list(refs) for refs in references])}
