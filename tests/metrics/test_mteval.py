"""BLEU and NIST (MT-Eval v13a as the E2E scorer runs it) on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from peftrepro.metrics.e2e import mteval, score_bleu, score_nist


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("The Eagle, near Café Rouge.", "the eagle , near café rouge ."),
        ("CAFÉ", "cafÉ"),  # Perl's tr/[A-Z]/[a-z]/ lowercases ASCII only
        ("It costs £20-25 or 3.5, yes/no", "it costs £20 - 25 or 3.5 , yes / no"),
        ("it's family-friendly (kids)", "it's family-friendly ( kids )"),
        ("a &amp; b &quot;c&quot;", 'a & b " c "'),  # entities resolved as by the SGML reader
        ("two\nlines\t here ", "two lines here"),
        ("", ""),
    ],
)
def test_tokenize_follows_mteval_v13a(text: str, tokens: str) -> None:
    assert mteval.tokenize(text) == tokens.split()


@pytest.mark.parametrize(
    ("predictions", "references", "expected"),
    [
        # 1-4-gram matches 6/7, 4/5, 2/3, 1/1; closest ref lengths 4 + 2 (tie 4 vs 2 at distance 1 -> shorter)
        (["a b c d", "a b z"], [["a b c d"], ["a b x y", "a b"]], (6 / 7 * 4 / 5 * 2 / 3 * 1) ** 0.25),
        # no 3-/4-grams in the hypothesis: mteval adds log 1 for them; brevity exp(1 - 4/2)
        (["a b"], [["a b c d"]], math.exp(1 - 4 / 2)),
        # zero bigram/trigram matches: mteval smoothing 1/(2 * 2) and 1/(4 * 1)
        (["a b c"], [["a x c"]], (2 / 3 * 1 / 4 * 1 / 4) ** 0.25),
        (["The Eagle, near Café."], [["the eagle , near café ."]], 1.0),
        ([""], [["a b"]], 0.0),
    ],
)
def test_bleu_hand_computed(predictions, references, expected) -> None:
    assert score_bleu(predictions, references) == pytest.approx(expected, rel=1e-12)


_BETA = -math.log(0.5) / math.log(1.5) ** 2


@pytest.mark.parametrize(
    ("predictions", "references", "expected"),
    [
        # info from all 5 reference words: a, b = log2(5/2), c = log2(5), "a b" = "a c" = log2(2/1);
        # unigram term (3 log2 2.5 + log2 5) / 4, bigram term 2 / 2; length ratio 4 / (5 / 1.5) > 1
        (["a b", "a c"], [["a b"], ["a c", "b"]], (3 * math.log2(2.5) + math.log2(5)) / 4 + 1),
        # Perl's average reference length: 8 words / (3 refs / 2 MRs) -> ratio 2 / 5.333 = 0.375
        # (the scorer's Python port would use 4 + 2 = 6 -> 1/3)
        (["a", "a"], [["a b c d"], ["a b", "a c"]], math.log2(8 / 3) * math.exp(-_BETA * math.log(0.375) ** 2)),
        ([""], [["a b"]], 0.0),
    ],
)
def test_nist_hand_computed(predictions, references, expected) -> None:
    assert score_nist(predictions, references) == pytest.approx(expected, rel=1e-12)


def test_empty_references_are_padding_for_bleu_and_nist() -> None:
    """The scorer pads MRs with fewer references with empty ones; mteval ignores them."""
    predictions = ["a b c", "a b"]
    plain = [["a b c d"], ["a b", "b a c"]]
    padded = [["a b c d", ""], ["a b", "", "b a c"]]
    assert mteval.bleu_nist(predictions, padded) == mteval.bleu_nist(predictions, plain)


def test_closest_reference_length_prefers_shorter_on_ties() -> None:
    assert mteval._closest_ref_length([7, 9, 5], hyp_length=7) == 7
    assert mteval._closest_ref_length([11, 8, 6], hyp_length=7) == 6
    assert mteval._closest_ref_length([11, 0], hyp_length=1) == 11  # empty reference = padding


def test_unicode_is_matched_exactly() -> None:
    predictions = ["Café Rouge costs £20-25 日本"]
    assert score_bleu(predictions, [["café rouge costs £20-25 日本"]]) == pytest.approx(1.0)
    assert score_bleu(["CAFÉ ROUGE"], [["café rouge"]]) < 1.0  # É is not ASCII, so it keeps its case
