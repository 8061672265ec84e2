"""The acceptance check: TGen's test-set output scores as published (Dušek et al., 2018).

Runs by default (about 20 s: one JVM for the tokenizer, one for METEOR); skipped only when the
data files are absent. Without Java, METEOR is None and the rest must still match.
"""

from __future__ import annotations

import pytest

from peftrepro.metrics import score_e2e_files
from peftrepro.metrics.e2e import coco, read_prediction_file, read_references

PUBLISHED = {"bleu": 0.6593, "nist": 8.6094, "meteor": 0.4483, "rouge_l": 0.6850, "cider": 2.2338}
TOLERANCE = {"bleu": 0.001, "nist": 0.005, "meteor": 0.001, "rouge_l": 0.001, "cider": 0.005}


def test_official_counts(tgen_files) -> None:
    predictions, references = tgen_files
    groups = read_references(references)
    assert (len(groups), sum(map(len, groups))) == (630, 4693)
    assert len(read_prediction_file(predictions)) == 630


def test_tgen_scores_match_the_published_ones(tgen_files) -> None:
    scores = score_e2e_files(*tgen_files)
    if not coco.java_available():
        assert scores.pop("meteor") is None
    for name, value in scores.items():
        assert value == pytest.approx(PUBLISHED[name], abs=TOLERANCE[name]), name
