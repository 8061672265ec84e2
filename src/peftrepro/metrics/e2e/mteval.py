"""BLEU and NIST as the E2E scorer's Perl ``mteval-v13a-sig.pl`` computes them.

Hand-written on purpose: no kept library reproduces the published E2E numbers.
- NIST: sacrebleu has none; nltk's ``corpus_nist`` tokenises differently and takes the
  reference length from the closest reference, not from the average below.
- The E2E scorer's own Python port (``pymteval.py``) defines NIST's average reference
  length as the sum of per-MR mean lengths, which gives TGen 8.5923 instead of the
  published 8.6094; the Perl script (as edited in e2e-metrics) uses
  ``total reference words / (total non-empty references / MRs)``, reproduced here.
- BLEU shares the tokenisation and n-gram statistics with NIST, so it is computed from the
  same pass. sacrebleu's BLEU would differ in two details: it lowercases all of Unicode
  (Perl's ``tr/[A-Z]/[a-z]/`` only ASCII) and it rejects MRs whose references are all empty.

Everything is corpus level: statistics are summed over all MRs before the scores are taken.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

BLEU_MAX_N = 4
NIST_MAX_N = 5

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# mteval-v13a `tokenization` (the non-international default), rule for rule.
_PUNCTUATION = re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])")
_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([\.,])")
_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([\.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))


def tokenize(text: str) -> list[str]:
    """Tokens of ``text`` after the scorer's SGML round trip and mteval-v13a's tokenisation.

    The scorer writes each text into an SGML ``<seg>``; the Perl reader collapses whitespace
    (newlines included) and resolves four entities before tokenising. Lowercasing is ASCII only,
    as Perl's ``tr/[A-Z]/[a-z]/`` does: "CAFÉ" becomes "cafÉ".
    """
    text = re.sub(r"\s+", " ", text).replace("<skipped>", "")
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    text = f" {text} ".translate(_ASCII_LOWER)
    text = _PUNCTUATION.sub(r" \1 ", text)
    text = _PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", text)
    text = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    return text.split()


def _ngram_counts(words: list[str], max_n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


def _closest_ref_length(ref_lengths: list[int], hyp_length: int) -> int:
    """BLEU's reference length for one MR (mteval ``brevity_penalty_closest``).

    Closest to the hypothesis, the shorter on ties. Empty references are padding in the SGML
    files and are skipped, except that the first reference seeds the search even when empty.
    """
    best = ref_lengths[0]
    for length in ref_lengths[1:]:
        if length and (abs(hyp_length - length), length) < (abs(hyp_length - best), best):
            best = length
    return best


@dataclass
class _CorpusStats:
    """Sums over MRs of what mteval's ``score_segment`` returns (index n = n-gram order)."""

    matches: list[int] = field(default_factory=lambda: [0] * (NIST_MAX_N + 1))
    hyp_ngrams: list[int] = field(default_factory=lambda: [0] * (NIST_MAX_N + 1))
    matched_info: list[float] = field(default_factory=lambda: [0.0] * (NIST_MAX_N + 1))
    bleu_ref_length: int = 0
    ref_words: int = 0
    nonempty_refs: int = 0
    segments: int = 0

    def as_vector(self) -> list[float]:
        """The statistics as one flat list (`SEGMENT_FIELDS`), which sums over MRs."""
        return [*self.matches[1:], *self.hyp_ngrams[1:], *self.matched_info[1:], self.bleu_ref_length,
                self.ref_words, self.nonempty_refs, self.segments]

    @classmethod
    def from_vector(cls, vector: list[float]) -> _CorpusStats:
        n = NIST_MAX_N
        return cls([0, *vector[:n]], [0, *vector[n:2 * n]], [0.0, *vector[2 * n:3 * n]], *vector[3 * n:])


# What each position of a segment's statistics vector (`segment_stats`) holds.
SEGMENT_FIELDS = (*(f"matches_{n}" for n in range(1, NIST_MAX_N + 1)),
                  *(f"hyp_ngrams_{n}" for n in range(1, NIST_MAX_N + 1)),
                  *(f"matched_info_{n}" for n in range(1, NIST_MAX_N + 1)),
                  "bleu_ref_length", "ref_words", "nonempty_refs", "segments")


def _information_weights(tokenized_refs: list[list[list[str]]]) -> dict[tuple[str, ...], float]:
    """NIST information of every reference n-gram: log2(count(prefix) / count(ngram)),
    counts over all references of the corpus; a unigram's prefix count is the word total."""
    counts: Counter[tuple[str, ...]] = Counter()
    total_words = 0
    for refs in tokenized_refs:
        for ref in refs:
            counts.update(_ngram_counts(ref, NIST_MAX_N))
            total_words += len(ref)
    return {
        ngram: math.log2((counts[ngram[:-1]] if len(ngram) > 1 else total_words) / count)
        for ngram, count in counts.items()
    }


def _segment_stats(hyp: list[str], refs: list[list[str]], info: dict[tuple[str, ...], float]) -> _CorpusStats:
    stats = _CorpusStats(segments=1)
    max_ref_counts: Counter[tuple[str, ...]] = Counter()
    for ref in refs:
        max_ref_counts |= _ngram_counts(ref, NIST_MAX_N)  # |= keeps the max count per n-gram
    for ngram, count in _ngram_counts(hyp, NIST_MAX_N).items():
        clipped = min(count, max_ref_counts[ngram])
        if clipped:
            stats.matches[len(ngram)] += clipped
            stats.matched_info[len(ngram)] += info[ngram] * clipped
    for n in range(1, NIST_MAX_N + 1):
        stats.hyp_ngrams[n] += max(len(hyp) - n + 1, 0)
    stats.bleu_ref_length = _closest_ref_length([len(ref) for ref in refs], len(hyp))
    stats.ref_words = sum(len(ref) for ref in refs)
    stats.nonempty_refs = sum(1 for ref in refs if ref)
    return stats


def segment_stats(predictions: list[str], references: list[list[str]]) -> list[list[float]]:
    """Per MR, its BLEU/NIST statistics as a vector (`SEGMENT_FIELDS`). Summed over any set of MRs
    they give that set's corpus scores (`scores_from_sums`), with NIST's information weights fixed
    by the whole reference corpus: what a bootstrap over MRs resamples."""
    tokenized_refs = [[tokenize(ref) for ref in refs] for refs in references]
    info = _information_weights(tokenized_refs)
    return [_segment_stats(tokenize(prediction), refs, info).as_vector()
            for prediction, refs in zip(predictions, tokenized_refs)]


def scores_from_sums(vector: list[float]) -> tuple[float, float]:
    """Corpus BLEU and NIST from summed segment statistics."""
    stats = _CorpusStats.from_vector(vector)
    return _bleu(stats), _nist(stats)


def _corpus_stats(predictions: list[str], references: list[list[str]]) -> _CorpusStats:
    segments = segment_stats(predictions, references)
    return _CorpusStats.from_vector([sum(column) for column in zip(*segments)])


def _bleu(stats: _CorpusStats) -> float:
    """mteval ``bleu_score`` (its default smoothing: a zero match count at order n counts as
    1/2^k; an order with no hypothesis n-grams contributes log 1 = 0)."""
    hyp_words = stats.hyp_ngrams[1]
    if hyp_words == 0:
        return 0.0
    brevity = math.exp(min(0.0, 1.0 - stats.bleu_ref_length / hyp_words))
    log_precision_sum, smooth = 0.0, 1
    for n in range(1, BLEU_MAX_N + 1):
        if stats.hyp_ngrams[n] == 0:
            continue
        if stats.matches[n] == 0:
            smooth *= 2
            log_precision_sum += math.log(1 / (smooth * stats.hyp_ngrams[n]))
        else:
            log_precision_sum += math.log(stats.matches[n] / stats.hyp_ngrams[n])
    return math.exp(log_precision_sum / BLEU_MAX_N) * brevity


_NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2


def _nist_length_penalty(ratio: float) -> float:
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-_NIST_BETA * math.log(ratio) ** 2)


def _nist(stats: _CorpusStats) -> float:
    """mteval ``nist_score`` at system level. The length ratio compares the hypothesis words
    with (MRs x average reference length), the average taken over all non-empty references.
    With no reference words at all, Perl divides by zero; we return 0."""
    if stats.ref_words == 0:
        return 0.0
    refs_per_segment = stats.nonempty_refs / stats.segments
    ratio = stats.hyp_ngrams[1] / (stats.ref_words / refs_per_segment)
    information = sum(stats.matched_info[n] / max(stats.hyp_ngrams[n], 1) for n in range(1, NIST_MAX_N + 1))
    return information * _nist_length_penalty(ratio)


def bleu_nist(predictions: list[str], references: list[list[str]]) -> tuple[float, float]:
    """Corpus BLEU (4-gram) and NIST (5-gram), case-insensitive, multi-reference."""
    stats = _corpus_stats(predictions, references)
    return _bleu(stats), _nist(stats)


def corpus_bleu(predictions: list[str], references: list[list[str]]) -> float:
    return _bleu(_corpus_stats(predictions, references))


def corpus_nist(predictions: list[str], references: list[list[str]]) -> float:
    return _nist(_corpus_stats(predictions, references))
