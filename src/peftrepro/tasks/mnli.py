"""MultiNLI with a causal LM (paper Table 4, as with GPT-3): premise + hypothesis -> label word.

The paper gives no prompt (paper-reference §6b: UNCONFIRMED), so we use the GPT-3 paper's NLI
cloze (Brown et al. 2020, ANLI/RTE) and keep it a config value:

    "{premise}\\nQuestion: {hypothesis} True, False, or Neither?\\nAnswer:"  +  " True" | " Neither" | " False"

Training puts the loss on the gold label word's tokens only. Prediction compares the model's
summed log-likelihood of the three label words after the prompt (batched scoring, no free
generation) and takes the most likely. Metrics: accuracy_m on validation_matched (the paper's
MNLI-m, primary) and accuracy_mm on validation_mismatched; eval split `validation` loads both.
Offline, `train` is the 9,999-pair subset of the data root (README: full train unavailable).

Splits: `train` and `dev` divide the training pairs (a seeded `dev_fraction` held out: the
learning-rate selection's split, never evaluated on), `validation_matched` / `_mismatched` are the
evaluation sets (the paper's MNLI-m is the matched one). A limit keeps a seeded sample of a split.
Every row carries an `id` (subset / line of its file) that pairs runs example by example.

When every label word is one token (the default words with the GPT-2 and SmolLM2 tokenizers), one
forward pass per example scores all three labels from the next-token distribution after the
prompt; otherwise each (prompt, label word) pair is scored on its own. Same log-likelihoods
(tested), a third of the work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from peftrepro.errors import ConfigError
from peftrepro.interfaces import DecodingConfig, EncodedExample, EvalOutput, PromptWrap
from peftrepro.models import sequence_start
from peftrepro.tasks import data
from peftrepro.tasks.base import (
    TaskOptions,
    check_fraction,
    check_split,
    encode_pair,
    hold_out,
    next_token_logprobs,
    parse_options,
    sample,
    sequence_logprobs,
    text_ids,
    wrapped_prompt,
)

LABELS = ("entailment", "neutral", "contradiction")  # HF glue/mnli label ids 0, 1, 2
LOCAL_FILES = {"train": "train_subset.jsonl.gz", "validation_matched": "validation_matched.jsonl.gz",
               "validation_mismatched": "validation_mismatched.jsonl.gz"}
SUBSETS = {"validation_matched": "matched", "validation_mismatched": "mismatched", "train": "train", "dev": "dev"}
BOTH_VALIDATION = "validation"  # eval split meaning matched + mismatched
DEV = "dev"  # held-out training pairs (learning-rate selection)
METRIC_OF_SUBSET = {"matched": "accuracy_m", "mismatched": "accuracy_mm", "dev": "accuracy_dev"}
LOGPROB_DIGITS = 4  # the saved per-label log-likelihoods (predictions file); the argmax uses full precision
FIELDS = ("premise", "hypothesis", "label")


@dataclass(frozen=True)
class MNLIOptions(TaskOptions):
    eval_split: str = BOTH_VALIDATION
    max_length: int = 768  # paper D.4 sequence length for MNLI
    # GPT-3-style NLI cloze; the paper's own MNLI prompt is not published
    prompt_template: str = "{premise}\nQuestion: {hypothesis} True, False, or Neither?\nAnswer:"
    label_words: dict[str, str] = field(default_factory=lambda: {
        "entailment": " True", "neutral": " Neither", "contradiction": " False"})
    dev_fraction: float = 0.06  # share of the training pairs held out as `dev` (9,999 -> 600)
    split_seed: int = 0  # seed of the dev hold-out and of every limited split's sample


class MNLITask:
    name = "mnli"
    primary_metric = "accuracy_m"
    selection_metric = "accuracy_dev"  # the learning-rate selection's metric, on the dev split
    dev_split_text = "MultiNLI, held-out pairs of its training subset"
    splits = (*LOCAL_FILES, BOTH_VALIDATION, DEV)

    def __init__(self, data_root: str | Path | None, options: dict[str, Any] | None = None):
        self.options = parse_options(MNLIOptions, self.name, options)
        self.label_words = {label: str(word) for label, word in dict(self.options.label_words).items()}
        if sorted(self.label_words) != sorted(LABELS) or len(set(self.label_words.values())) != 3:
            raise ConfigError(f"task 'mnli': label_words must map each of {list(LABELS)} to a distinct word, "
                              f"got {self.label_words}")
        if "{premise}" not in self.options.prompt_template or "{hypothesis}" not in self.options.prompt_template:
            raise ConfigError("task 'mnli': prompt_template must contain {premise} and {hypothesis}")
        for split in (self.options.train_split, self.options.eval_split):
            check_split(self.name, split, self.splits)
        check_fraction(self.name, "dev_fraction", self.options.dev_fraction)
        self.data_root = data.resolve_data_root(data_root)

    # --------------------------------------------------------------------- data

    def load_split(self, split: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Pairs {id, premise, hypothesis, label, label_text, subset}; `limit` samples each subset."""
        check_split(self.name, split, self.splits)
        if split == BOTH_VALIDATION:
            return (self.load_split("validation_matched", limit) + self.load_split("validation_mismatched", limit))
        records = self._file("train" if split == DEV else split)
        if split in ("train", DEV):
            dev = hold_out(range(len(records)), self.options.dev_fraction, self.options.split_seed)
            records = [{**record, "subset": SUBSETS[split]} for index, record in enumerate(records)
                       if (index in dev) == (split == DEV)]
        return sample(records, limit, self.options.split_seed)

    def _file(self, split: str) -> list[dict[str, Any]]:
        """The rows of one file, each with its subset, label text and id (subset/line)."""
        if self.data_root is None:
            records = data.hub_mnli(split)
        else:
            records = data.read_jsonl(data.require_file(self.data_root / "mnli" / LOCAL_FILES[split]), FIELDS)
        subset = SUBSETS[split]
        return [{**record, "label_text": LABELS[int(record["label"])], "subset": subset, "id": f"{subset}/{index}"}
                for index, record in enumerate(records)]

    # --------------------------------------------------------------------- encoding

    def prompt_text(self, example: dict[str, Any]) -> str:
        return self.options.prompt_template.format(premise=example["premise"], hypothesis=example["hypothesis"])

    def encode(self, example: dict[str, Any], tokenizer: Any, prompt: PromptWrap, max_length: int) -> EncodedExample:
        target = text_ids(tokenizer, self.label_words[LABELS[int(example["label"])]])
        return encode_pair(text_ids(tokenizer, self.prompt_text(example)), target, prompt, max_length,
                           sequence_start(tokenizer))

    # --------------------------------------------------------------------- evaluation

    def evaluate(self, model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], prompt: PromptWrap,
                 decoding: DecodingConfig) -> EvalOutput:
        words = [text_ids(tokenizer, self.label_words[label]) for label in LABELS]
        budget = self.options.max_length - max(len(w) for w in words)
        start = sequence_start(tokenizer)
        contexts = [wrapped_prompt(text_ids(tokenizer, self.prompt_text(example)), prompt, budget, start)
                    for example in examples]
        scores = label_logprobs(model, tokenizer, contexts, words, decoding.batch_size)
        rows = []
        for example, label_scores in zip(examples, scores):
            predicted = LABELS[max(range(len(LABELS)), key=label_scores.__getitem__)]
            gold = LABELS[int(example["label"])]
            rows.append({"id": example.get("id"), "subset": example.get("subset"), "label": gold,
                         "prediction": predicted, "correct": predicted == gold,
                         "logprobs": {label: round(score, LOGPROB_DIGITS) for label, score in zip(LABELS, label_scores)}})
        subsets = list(dict.fromkeys(row["subset"] for row in rows))
        notes = {"examples": {s: sum(r["subset"] == s for r in rows) for s in subsets},
                 "label_counts": {s: {label: sum(r["subset"] == s and r["label"] == label for r in rows)
                                      for label in LABELS} for s in subsets}}
        return EvalOutput(metrics=accuracy_by_subset(rows), predictions=rows, notes=notes)


def label_logprobs(model: Any, tokenizer: Any, contexts: Sequence[list[int]], words: Sequence[list[int]],
                   batch_size: int) -> list[list[float]]:
    """log p(word | context) of every label word after every context: one forward pass per context
    when each word is a single token, else one per (context, word) pair."""
    if all(len(word) == 1 for word in words):
        return next_token_logprobs(model, tokenizer, contexts, [word[0] for word in words], batch_size)
    pairs = [(context, word) for context in contexts for word in words]
    flat = sequence_logprobs(model, tokenizer, pairs, batch_size=batch_size * len(words))
    return [flat[i * len(words):(i + 1) * len(words)] for i in range(len(contexts))]


def accuracy_by_subset(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    metrics = {}
    for subset, metric in METRIC_OF_SUBSET.items():
        chosen = [row["correct"] for row in rows if row["subset"] == subset]
        if chosen:
            metrics[metric] = sum(chosen) / len(chosen)
    return metrics
