"""METEOR, ROUGE-L and CIDEr as the E2E scorer computes them, through pycocoevalcap.

The scorer hands raw texts to the MS-COCO caption evaluator, which first runs Stanford's
PTBTokenizer (stanford-corenlp-3.4.1.jar, ``-preserveLines -lowerCase``) and drops punctuation
tokens, then scores with METEOR 1.5 (``-l en -norm``), ROUGE-L (LCS F, beta 1.2) and CIDEr
(the CIDEr-D variant: clipped n-gram counts and a Gaussian length penalty, sigma 6; idf taken
from the evaluated references). pycocoevalcap ships the same code and jars; we call its scorers.

Java is needed for the tokenizer and METEOR. Without it METEOR is reported as None and the
tokenizer falls back to a pure-Python approximation (`approximate_ptb_tokenize`), both with a
warning.
"""

from __future__ import annotations

import atexit
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as _meteor_module
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer as _ptb_module

PTB_JAR = Path(_ptb_module.__file__).parent / _ptb_module.STANFORD_CORENLP_3_4_1_JAR
METEOR_JAR = Path(_meteor_module.__file__).parent / _meteor_module.METEOR_JAR
PUNCTUATIONS = frozenset(_ptb_module.PUNCTUATIONS)
# Both JVMs get UTF-8 explicitly, so that "café" does not depend on the user's locale.
_JAVA_UTF8 = "-Dfile.encoding=UTF-8"
# Line separators that Java's reader would treat as line breaks (and so shift the lines).
_LINE_BREAKS = re.compile(r"[\n\r\u2028\u2029\u0085\x0b\x0c]")


class MetricToolError(RuntimeError):
    """A Java scorer (PTBTokenizer or METEOR) failed; the message carries its stderr."""


def java_available() -> bool:
    return shutil.which("java") is not None


def _drop_punctuation(tokenized_line: str) -> str:
    # exactly pycocoevalcap's filter (note: "-lrb-" survives, since -lowerCase lowercases the
    # bracket tokens and the list holds "-LRB-")
    return " ".join(word for word in tokenized_line.rstrip().split(" ") if word not in PUNCTUATIONS)


def ptb_tokenize(texts: list[str]) -> list[str]:
    """Lowercased PTB tokens without punctuation, joined by spaces, one string per text."""
    if not java_available():
        warnings.warn(
            "Java not found: ROUGE-L and CIDEr use a pure-Python approximation of the "
            "Stanford PTB tokenizer (install a JRE, e.g. `apt-get install default-jre`, for the "
            "official normalisation).",
            stacklevel=2,
        )
        return [approximate_ptb_tokenize(text) for text in texts]
    return [_drop_punctuation(line) for line in _run_ptb_jar(texts)]


def _run_ptb_jar(texts: list[str]) -> list[str]:
    """Run the jar over the texts, one per line. Written here rather than via pycocoevalcap's
    PTBTokenizer, which writes its temp file into site-packages (fails on read-only installs);
    the command and flags are the same."""
    with tempfile.TemporaryDirectory(prefix="peftrepro-ptb-") as tmp:
        source = Path(tmp) / "texts.txt"
        source.write_text("\n".join(_LINE_BREAKS.sub(" ", text) for text in texts), encoding="utf-8")
        command = ["java", _JAVA_UTF8, "-cp", str(PTB_JAR), "edu.stanford.nlp.process.PTBTokenizer"]
        command += ["-preserveLines", "-lowerCase", str(source)]
        done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        raise MetricToolError(f"PTBTokenizer failed ({' '.join(command)}):\n{done.stderr.decode(errors='replace')}")
    lines = done.stdout.decode("utf-8").split("\n")
    if lines and lines[-1] == "" and len(lines) == len(texts) + 1:
        lines.pop()  # a trailing newline after the last text
    if len(lines) != len(texts):
        raise MetricToolError(f"PTBTokenizer returned {len(lines)} lines for {len(texts)} texts")
    return lines


# ---- pure-Python fallback -----------------------------------------------------------------
# Mimics what PTBTokenizer does to English E2E text, as far as it survives punctuation removal:
# clitics split ("it's" -> "it 's"), currency normalised and split ("£20" -> "# 20"), brackets
# renamed, and ., , ; : ? ! % split off words (but kept inside numbers and abbreviations).
_ABBREVIATIONS = frozenset("mr mrs ms dr st rd ave co corp inc ltd jr sr vs etc mt ft approx".split())
_INITIALISM = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # "p.m", "u.s", "e.g" (trailing period stripped)
_FALLBACK_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"£", " # "),
        (r"€", " $ "),
        (r"\$", " $ "),
        (r'"', " '' "),
        (r"\.\.\.", " ... "),
        (r"--", " -- "),
        (r"(?<![0-9]),|,(?![0-9])", " , "),
        (r"(?<![0-9]):|:(?![0-9])", " : "),
        (r"([;!?%&])", r" \1 "),
        (r"(?i)\b(can)(not)\b", r"\1 \2"),
        (r"(?i)\b(gon|wan|got)(na|ta)\b", r"\1 \2"),
        (r"(?i)(\w)(n't)\b", r"\1 \2"),
        (r"(?i)(\w)('s|'m|'d|'re|'ve|'ll)\b", r"\1 \2"),
        (r"(^|\s)'(?!(?:s|m|d|re|ve|ll)\b)(?=\w)", r"\1' "),
        (r"(^|\s)\.(?=\w)", r"\1. "),
        (r"(\w)'(?=[^\w']|$)", r"\1 '"),
        (r"-(?=[^\w-]|$)", " - "),
        (r"(^|\s)-(?=[^\W\d_])", r"\1- "),  # but "-25" stays a number
        (r"([0-9])\.([^\W\d_])", r"\1 . \2"),
        # last, so that the hyphen rules above leave the bracket names alone
        (r"\(", " -lrb- "), (r"\)", " -rrb- "),
        (r"\[", " -lsb- "), (r"\]", " -rsb- "),
        (r"\{", " -lcb- "), (r"\}", " -rcb- "),
    )
)


def _strip_sentence_period(token: str, next_token: str) -> str:
    """PTB splits a word's final period off unless the word is an abbreviation or the period
    is followed by a comma ("center.," keeps "center.")."""
    if not token.endswith(".") or token == "..." or next_token == ",":
        return token
    stem = token.rstrip(".")
    is_abbreviation = stem in _ABBREVIATIONS or _INITIALISM.fullmatch(stem) is not None
    return token if is_abbreviation else stem


def approximate_ptb_tokenize(text: str) -> str:
    """Pure-Python stand-in for the jar + punctuation removal (used only without Java).
    On the E2E test references and TGen's outputs it agrees with the jar on nearly every line
    (tests/metrics measure it)."""
    text = text.lower()
    for pattern, replacement in _FALLBACK_RULES:
        text = pattern.sub(replacement, text)
    tokens = text.split()
    tokens = [_strip_sentence_period(token, next_token) for token, next_token in zip(tokens, tokens[1:] + [""])]
    return " ".join(token for token in tokens if token and token not in PUNCTUATIONS)


# ---- scorers ----------------------------------------------------------------------------------
def _as_coco(tokenized_predictions: list[str], tokenized_references: list[list[str]]):
    references = {index: list(refs) for index, refs in enumerate(tokenized_references)}
    predictions = {index: [prediction] for index, prediction in enumerate(tokenized_predictions)}
    return references, predictions


def rouge_l(tokenized_predictions: list[str], tokenized_references: list[list[str]]) -> float:
    """Mean over MRs of pycocoevalcap's ROUGE-L. Note its "best over references": precision and
    recall are maximised separately over the references before the F-measure (beta 1.2)."""
    return rouge_l_segments(tokenized_predictions, tokenized_references)[0]


def rouge_l_segments(tokenized_predictions: list[str], tokenized_references: list[list[str]]) -> tuple[float, list[float]]:
    """ROUGE-L and each MR's own score (the corpus score is their mean)."""
    score, scores = Rouge().compute_score(*_as_coco(tokenized_predictions, tokenized_references))
    return float(score), [float(s) for s in scores]


def cider(tokenized_predictions: list[str], tokenized_references: list[list[str]]) -> float:
    """pycocoevalcap's CIDEr, which is the CIDEr-D variant the E2E scorer ships (n = 4,
    sigma = 6, clipping, x10); document frequencies come from these references."""
    return cider_segments(tokenized_predictions, tokenized_references)[0]


def cider_segments(tokenized_predictions: list[str], tokenized_references: list[list[str]]) -> tuple[float, list[float]]:
    """CIDEr and each MR's own score (the corpus score is their mean, idf from all references)."""
    score, scores = Cider().compute_score(*_as_coco(tokenized_predictions, tokenized_references))
    return float(score), [float(s) for s in scores]


class _MeteorProcess(_meteor_module.Meteor):
    """pycocoevalcap's METEOR wrapper with the same command plus UTF-8, a readable stderr and
    an idempotent close (its ``__del__`` takes a lock it never releases)."""

    def __init__(self) -> None:
        self._stderr = tempfile.TemporaryFile()
        self.meteor_cmd = ["java", _JAVA_UTF8, "-jar", "-Xmx2G", METEOR_JAR.name]
        self.meteor_cmd += ["-", "-", "-stdio", "-l", "en", "-norm"]
        self.meteor_p = subprocess.Popen(
            self.meteor_cmd, cwd=METEOR_JAR.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self.lock = threading.Lock()

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def close(self) -> None:
        if getattr(self, "meteor_p", None) is None:
            return  # the JVM never started
        if self.meteor_p.poll() is None:
            self.meteor_p.stdin.close()
            self.meteor_p.kill()
            self.meteor_p.wait()
        self.meteor_p.stdout.close()
        self._stderr.close()

    __del__ = close


_shared_meteor: _MeteorProcess | None = None
_shared_meteor_lock = threading.Lock()


def _close_shared_meteor() -> None:
    if _shared_meteor is not None:
        _shared_meteor.close()


def _meteor_process() -> _MeteorProcess:
    """One METEOR JVM per Python process: loading its paraphrase table takes seconds, and
    evaluation during training scores many times. Restarted if it died; closed at exit."""
    global _shared_meteor
    with _shared_meteor_lock:
        if _shared_meteor is None or _shared_meteor.meteor_p.poll() is not None:
            _close_shared_meteor()
            _shared_meteor = _MeteorProcess()
        return _shared_meteor


atexit.register(_close_shared_meteor)


def meteor(tokenized_predictions: list[str], tokenized_references: list[list[str]]) -> float | None:
    """Corpus METEOR 1.5 from the jar (aggregated statistics, not a mean of MR scores);
    None, with a warning, when Java is missing."""
    return meteor_segments(tokenized_predictions, tokenized_references)[0]


def meteor_segments(tokenized_predictions: list[str],
                    tokenized_references: list[list[str]]) -> tuple[float | None, list[float] | None]:
    """Corpus METEOR and each MR's segment score from the same JVM call (None, None without Java)."""
    if not java_available():
        warnings.warn("Java not found: METEOR is reported as None (it needs meteor-1.5.jar).", stacklevel=2)
        return None, None
    process = _meteor_process()
    try:
        score, scores = process.compute_score(*_as_coco(tokenized_predictions, tokenized_references))
    except (ValueError, BrokenPipeError) as error:  # the JVM died or answered garbage
        message = f"METEOR failed ({' '.join(process.meteor_cmd)}):\n{process.stderr_text()}"
        process.close()  # the next call starts a fresh JVM
        raise MetricToolError(message) from error
    return float(score), [float(s) for s in scores]
