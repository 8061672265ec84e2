"""The E2E NLG Challenge metrics, computed as the official scorer (tuetschek/e2e-metrics,
``measure_scores.py``) computes them: BLEU and NIST from MT-Eval v13a (the Perl script, whose
numbers were published), METEOR, ROUGE-L and CIDEr from the MS-COCO caption evaluator.

Scores are on the scorer's raw scale (BLEU 0.6593, not 65.93).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from peftrepro.errors import DataError
from peftrepro.metrics.e2e import coco, mteval
from peftrepro.metrics.e2e.files import (
    align_references_by_mr,
    read_prediction_file,
    read_predictions_with_mrs,
    read_references,
    read_references_with_mrs,
)

E2E_METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")


def check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """One clear DataError for the mistakes the scorers would otherwise crash on."""
    if len(predictions) != len(references):
        raise DataError(
            f"{len(predictions)} predictions but {len(references)} reference groups: "
            "give one prediction per MR and, per MR, the list of its references."
        )
    if not predictions:
        raise DataError("No predictions to score: the prediction list is empty.")
    for index, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise DataError(f"predictions[{index}] is {type(prediction).__name__}, expected a string.")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not all(isinstance(ref, str) for ref in refs):
            raise DataError(
                f"references[{index}] must be a list of strings (all references of one MR), "
                f"got {refs!r:.80}; wrap a single reference as [reference]."
            )
        if len(refs) == 0:
            raise DataError(f"references[{index}] is empty: every MR needs at least one reference.")


def _ptb_normalised(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    """PTB-tokenise predictions and references in one JVM run (-preserveLines keeps lines
    independent); regroup the references."""
    flat_references = [ref for refs in references for ref in refs]
    tokenized = coco.ptb_tokenize(list(predictions) + flat_references)
    tokenized_predictions, rest = tokenized[: len(predictions)], iter(tokenized[len(predictions) :])
    return tokenized_predictions, [[next(rest) for _ in refs] for refs in references]


def score_e2e(predictions: list[str], references: list[list[str]]) -> dict[str, float | None]:
    """All five E2E metrics for one prediction per MR against that MR's references.

    Returns ``{"bleu", "nist", "meteor", "rouge_l", "cider"}``; ``meteor`` is None (with a
    warning) when Java is missing, and the tokenizer behind the last three then falls back to
    a Python approximation.
    """
    return score_e2e_segments(predictions, references)[0]


def score_e2e_segments(predictions: list[str], references: list[list[str]]
                       ) -> tuple[dict[str, float | None], list[dict[str, object]]]:
    """`score_e2e`, plus for each MR what its share of each corpus score is made of: the BLEU/NIST
    statistics vector (`mteval.SEGMENT_FIELDS`, which sums over MRs) and its ROUGE-L, CIDEr and
    METEOR segment scores. A bootstrap over MRs recomputes the corpus scores from these alone
    (the report's evaluation-set error; METEOR's corpus score is not a mean of segment scores, so
    for it the segment mean stands in)."""
    check_inputs(predictions, references)
    sums = mteval.segment_stats(list(predictions), [list(refs) for refs in references])
    bleu, nist = mteval.scores_from_sums([sum(column) for column in zip(*sums)])
    tokenized_predictions, tokenized_references = _ptb_normalised(predictions, references)
    meteor, meteor_each = coco.meteor_segments(tokenized_predictions, tokenized_references)
    rouge_l, rouge_each = coco.rouge_l_segments(tokenized_predictions, tokenized_references)
    cider, cider_each = coco.cider_segments(tokenized_predictions, tokenized_references)
    metrics = {"bleu": bleu, "nist": nist, "meteor": meteor, "rouge_l": rouge_l, "cider": cider}
    segments = [{"mteval": [round(v, SEGMENT_DIGITS) for v in vector], "rouge_l": round(r, SEGMENT_DIGITS),
                 "cider": round(c, SEGMENT_DIGITS), "meteor": None if meteor_each is None else round(m, SEGMENT_DIGITS)}
                for vector, r, c, m in zip(sums, rouge_each, cider_each, meteor_each or [None] * len(sums))]
    return metrics, segments


SEGMENT_DIGITS = 6  # segment statistics as saved beside each prediction (NIST information is fractional)


def score_bleu(predictions: list[str], references: list[list[str]]) -> float:
    check_inputs(predictions, references)
    return mteval.corpus_bleu(list(predictions), [list(refs) for refs in references])


def score_nist(predictions: list[str], references: list[list[str]]) -> float:
    check_inputs(predictions, references)
    return mteval.corpus_nist(list(predictions), [list(refs) for refs in references])


def _score_ptb_normalised(scorer, predictions: list[str], references: list[list[str]]):
    check_inputs(predictions, references)
    return scorer(*_ptb_normalised(predictions, references))


def score_meteor(predictions: list[str], references: list[list[str]]) -> float | None:
    return _score_ptb_normalised(coco.meteor, predictions, references)


def score_rouge_l(predictions: list[str], references: list[list[str]]) -> float:
    return _score_ptb_normalised(coco.rouge_l, predictions, references)


def score_cider(predictions: list[str], references: list[list[str]]) -> float:
    return _score_ptb_normalised(coco.cider, predictions, references)


# One function per metric, for the `evaluate` modules; score_e2e shares the work among all five.
SINGLE_METRICS = {
    "bleu": score_bleu,
    "nist": score_nist,
    "meteor": score_meteor,
    "rouge_l": score_rouge_l,
    "cider": score_cider,
}


def score_e2e_files(pred_path: str | Path, refs_path: str | Path) -> dict[str, float | None]:
    """Score a prediction file against a reference file (formats: `read_prediction_file`,
    `read_references`). When both carry MRs, references are matched to predictions by MR,
    as the official scorer does; otherwise by position."""
    pred_mrs, predictions = read_predictions_with_mrs(pred_path)
    ref_mrs, references = read_references_with_mrs(refs_path)
    if pred_mrs is not None and ref_mrs is not None:
        references = align_references_by_mr(pred_mrs, ref_mrs, references, pred_path, refs_path)
    elif len(predictions) != len(references):
        raise DataError(
            f"{len(predictions)} predictions in {pred_path} but {len(references)} MRs (reference groups) "
            f"in {refs_path}: the prediction file needs one line per MR, in the order of the references."
        )
    return score_e2e(predictions, references)


__all__ = [
    "E2E_METRICS",
    "SINGLE_METRICS",
    "check_inputs",
    "read_prediction_file",
    "read_references",
    "score_bleu",
    "score_cider",
    "score_e2e",
    "score_e2e_files",
    "score_e2e_segments",
    "score_meteor",
    "score_nist",
    "score_rouge_l",
]
