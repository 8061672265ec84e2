"""score_e2e: the five metrics together, input checks, edge cases, and the run without Java."""

from __future__ import annotations

import pytest

from peftrepro.errors import DataError
from peftrepro.metrics import score_e2e
from peftrepro.metrics.e2e import E2E_METRICS, coco

needs_java = pytest.mark.skipif(not coco.java_available(), reason="needs Java (METEOR jar)")

PREDICTIONS = ["The Eagle is a pub near Café Rouge.", "The Mill serves cheap food."]
REFERENCES = [
    ["The Eagle is a pub near Café Rouge.", "Near Café Rouge there is a pub, The Eagle."],
    ["Cheap food is served at The Mill.", "The Mill offers low-priced food."],
]


@needs_java
def test_all_five_metrics_on_the_raw_scale() -> None:
    scores = score_e2e(PREDICTIONS, REFERENCES)
    assert list(scores) == list(E2E_METRICS)
    assert all(isinstance(value, float) for value in scores.values())
    assert all(0 < scores[name] <= 1 for name in ("bleu", "meteor", "rouge_l"))
    assert scores["nist"] > 1 and scores["cider"] > 1


def test_without_java_meteor_is_none_and_the_rest_is_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coco, "java_available", lambda: False)
    with pytest.warns(UserWarning, match="Java not found"):
        scores = score_e2e(PREDICTIONS, REFERENCES)
    assert scores["meteor"] is None
    assert all(isinstance(scores[name], float) for name in ("bleu", "nist", "rouge_l", "cider"))


@needs_java
def test_empty_predictions_score_zero() -> None:
    assert score_e2e(["", ""], REFERENCES) == {name: 0.0 for name in E2E_METRICS}


def test_one_empty_prediction_lowers_the_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coco, "meteor", lambda *args: None)  # keep this test free of the JVM
    full = score_e2e(PREDICTIONS, REFERENCES)
    partial = score_e2e(["", PREDICTIONS[1]], REFERENCES)
    assert all(0 <= partial[name] < full[name] for name in ("bleu", "nist", "rouge_l", "cider"))


def test_empty_reference_is_ignored_by_bleu_nist_rouge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coco, "meteor", lambda *args: None)
    padded = score_e2e(PREDICTIONS, [refs + [""] for refs in REFERENCES])
    plain = score_e2e(PREDICTIONS, REFERENCES)
    for name in ("bleu", "nist", "rouge_l"):
        assert padded[name] == pytest.approx(plain[name])
    assert padded["cider"] == pytest.approx(plain["cider"] * 2 / 3)  # CIDEr divides by the reference count


@needs_java
def test_unicode_text_matches_itself() -> None:
    texts = ["Café Rouge costs £20-25 — 日本料理 too."]
    scores = score_e2e(texts, [texts])
    assert scores["bleu"] == pytest.approx(1.0)
    assert scores["rouge_l"] == pytest.approx(1.0)
    assert scores["meteor"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        (["a", "b"], [["a"]], "2 predictions but 1 reference groups"),
        ([], [], "empty"),
        (["a"], ["a"], "must be a list of strings"),
        (["a"], [[]], "at least one reference"),
        ([None], [["a"]], "expected a string"),
    ],
)
def test_bad_input_gives_one_clear_error(predictions, references, message: str) -> None:
    with pytest.raises(DataError, match=message):
        score_e2e(predictions, references)
