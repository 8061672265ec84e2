"""PTB normalisation, ROUGE-L, CIDEr-D and METEOR (pycocoevalcap, as the E2E scorer uses it)."""

from __future__ import annotations

import contextlib

import pytest

from peftrepro.metrics.e2e import coco, score_cider, score_meteor, score_rouge_l

needs_java = pytest.mark.skipif(not coco.java_available(), reason="needs Java (PTBTokenizer / METEOR jars)")

# What stanford-corenlp-3.4.1's PTBTokenizer (-preserveLines -lowerCase) + pycocoevalcap's
# punctuation filter make of E2E-like text.
PTB_CASES = [
    ("Prices are £20-25.", "prices are # 20-25"),
    (
        "The Eagle, a family-friendly pub, costs £££ - it's cheap.",
        "the eagle a family-friendly pub costs # # # it 's cheap",
    ),
    ("It is rated 5 out of 5. Near Burger King", "it is rated 5 out of 5 near burger king"),
    ("x 'quoted' and \"double\" it.", "x quoted and double it"),
    ("It's by St. Peter's Rd. in the city centre.", "it 's by st. peter 's rd. in the city centre"),
    ("rated 1 out of 5.Near.", "rated 1 out of 5 near"),
    ("They don't serve (Italian) food; try Zizzi!", "they do n't serve -lrb- italian -rrb- food try zizzi"),
    ("in the city center., near All Bar One", "in the city center. near all bar one"),
    ("Café Rouge, £20-£25 price range", "café rouge # 20 # 25 price range"),
    ("", ""),
]


@needs_java
def test_ptb_jar_normalisation() -> None:
    texts = [text for text, _ in PTB_CASES]
    assert coco.ptb_tokenize(texts) == [expected for _, expected in PTB_CASES]


@pytest.mark.parametrize(("text", "expected"), PTB_CASES)
def test_python_fallback_matches_the_jar(text: str, expected: str) -> None:
    assert coco.approximate_ptb_tokenize(text) == expected


def test_fallback_is_used_with_a_warning_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coco, "java_available", lambda: False)
    with pytest.warns(UserWarning, match="Java not found"):
        assert coco.ptb_tokenize(["It's £20."]) == ["it 's # 20"]


@pytest.mark.parametrize("java", [True, False], ids=["jar", "fallback"])
def test_rouge_l_hand_computed(java: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if java and not coco.java_available():
        pytest.skip("needs Java")
    monkeypatch.setattr(coco, "java_available", lambda: java)
    predictions = ["the cat sat on the mat", "a b c d"]
    references = [
        ["the cat is on the mat", "a cat sat"],  # LCS 5 and 2: P = max(5/6, 2/6), R = max(5/6, 2/3) -> F = 5/6
        ["a b c d e f g h", "a"],  # P = max(1, 1/4), R = max(1/2, 1): P and R from different refs -> F = 1
    ]
    with contextlib.nullcontext() if java else pytest.warns(UserWarning, match="Java not found"):
        assert score_rouge_l(predictions, references) == pytest.approx((5 / 6 + 1) / 2)


def test_rouge_l_beta_weights_recall() -> None:
    # P = 1, R = 1/2 -> (1 + 1.44) * 1 * 0.5 / (0.5 + 1.44 * 1)
    assert coco.rouge_l(["a b"], [["a b c d"]]) == pytest.approx(2.44 * 0.5 / (0.5 + 1.44))


def test_cider_d_hand_computed() -> None:
    """Two MRs, so idf = log(2) - log(df) with df = 1 for every reference n-gram and
    log(2) - 0 for unseen ones. MR 1 matches its reference exactly: cosine 1 for 1- and
    2-grams, 0 for the absent 3-/4-grams -> mean 0.5, x10 = 5. MR 2 ("the mill" vs "the eagle")
    shares one unigram of two: cosine 1/2 -> mean 0.125, x10 = 1.25. CIDEr = (5 + 1.25) / 2."""
    predictions = ["blue spice", "the mill"]
    references = [["blue spice"], ["the eagle"]]
    assert score_cider(predictions, references) == pytest.approx(3.125)


def test_cider_averages_over_references_including_empty_ones() -> None:
    predictions = ["blue spice", "the mill"]
    padded = [["blue spice", ""], ["the eagle", ""]]
    assert score_cider(predictions, padded) == pytest.approx(3.125 / 2)


@needs_java
def test_meteor_identical_and_empty() -> None:
    assert score_meteor(["the eagle is a pub", "the mill"], [["the eagle is a pub"], ["the mill"]]) == 1.0
    assert score_meteor([""], [["the eagle is a pub"]]) == 0.0


def test_meteor_is_none_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coco, "java_available", lambda: False)
    with pytest.warns(UserWarning, match="METEOR is reported as None"):
        assert coco.meteor(["a"], [["a"]]) is None

