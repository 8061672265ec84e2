"""MultiNLI with a causal LM (paper Table 4, as with GPT-3): premise + hypothesis -> label word.

The paper gives no prompt (paper-reference §6b: UNCONFIRMED), so we use the GPT-3 paper's NLI
cloze (Brown et al. 2020, ANLI/RTE) and keep it a config value:

    "{premise}\\nQuestion: {hypothesis} True, False, or Neither?\\nAnswer:"  +  " True" | " Neither" | " False"

Training puts the loss on the gold label word's tokens only. Prediction compares the model's
summed log-likelihood of the three label words after the prompt (batched scoring, no free
generation) and takes the most likely. Metrics: accuracy_m on validation_matched (the paper's
MNLI-m, primary) and accuracy_mm on validation_mismatched; eval split `validation` loads both.
Offline, `train` is the 9,999-pair subset of the data root (README: full train unavailable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from peftrepro.errors import ConfigError
from peftrepro.interfaces import DecodingConfig, EncodedExample, EvalOutput, PromptWrap
from peftrepro.tasks import data
from peftrepro.tasks.base import (TaskOptions, check_split, encode_pair, parse_options, sequence_logprobs,
                                  text_ids, wrapped_prompt)

LABELS = ("entailment", "neutral", "contradiction")  # HF glue/mnli label ids 0, 1, 2
LOCAL_FILES = {"train": "train_subset.jsonl.gz", "validation_matched": "validation_matched.jsonl.gz",
               "validation_mismatched": "validation_mismatched.jsonl.gz"}
SUBSETS = {"validation_matched": "matched", "validation_mismatched": "mismatched", "train": "train"}
BOTH_VALIDATION = "validation"  # eval split meaning matched + mismatched
METRIC_OF_SUBSET = {"matched": "accuracy_m", "mismatched": "accuracy_mm"}
FIELDS = ("premise", "hypothesis", "label")


@dataclass(frozen=True)
class MNLIOptions(TaskOptions):
    eval_split: str = BOTH_VALIDATION
    max_length: int = 768  # paper D.4 sequence length for MNLI
    # GPT-3-style NLI cloze; the paper's own MNLI prompt is not published
    prompt_template: str = "{premise}\nQuestion: {hypothesis} True, False, or Neither?\nAnswer:"
    label_words: dict[str, str] = field(default_factory=lambda: {
        "entailment": " True", "neutral": " Neither", "contradiction": " False"})


class MNLITask:
    name = "mnli"
    primary_metric = "accuracy_m"
    splits = (*LOCAL_FILES, BOTH_VALIDATION)

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
        self.data_root = data.resolve_data_root(data_root)

    # --------------------------------------------------------------------- data

    def load_split(self, split: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Pairs {premise, hypothesis, label, label_text, subset}; `limit` applies to each subset."""
        check_split(self.name, split, self.splits)
        if split == BOTH_VALIDATION:
            return (self.load_split("validation_matched", limit) + self.load_split("validation_mismatched", limit))
        if self.data_root is None:
            records = data.hub_mnli(split)
        else:
            records = data.read_jsonl(data.require_file(self.data_root / "mnli" / LOCAL_FILES[split]), FIELDS)
        records = records if limit is None else records[:limit]
        return [{**record, "label_text": LABELS[int(record["label"])], "subset": SUBSETS[split]}
                for record in records]

    # --------------------------------------------------------------------- encoding

    def prompt_text(self, example: dict[str, Any]) -> str:
        return self.options.prompt_template.format(premise=example["premise"], hypothesis=example["hypothesis"])

    def encode(self, example: dict[str, Any], tokenizer: Any, prompt: PromptWrap, max_length: int) -> EncodedExample:
        target = text_ids(tokenizer, self.label_words[LABELS[int(example["label"])]])
        return encode_pair(text_ids(tokenizer, self.prompt_text(example)), target, prompt, max_length)

    # --------------------------------------------------------------------- evaluation

    def evaluate(self, model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], prompt: PromptWrap,
                 decoding: DecodingConfig) -> EvalOutput:
        words = [text_ids(tokenizer, self.label_words[label]) for label in LABELS]
        budget = self.options.max_length - max(len(w) for w in words)
        pairs = []
        for example in examples:
            context = wrapped_prompt(text_ids(tokenizer, self.prompt_text(example)), prompt, budget)
            pairs.extend((context, word) for word in words)
        scores = sequence_logprobs(model, tokenizer, pairs, batch_size=decoding.batch_size * len(LABELS))
        rows = []
        for index, example in enumerate(examples):
            label_scores = scores[index * len(LABELS):(index + 1) * len(LABELS)]
            predicted = LABELS[max(range(len(LABELS)), key=label_scores.__getitem__)]
            rows.append({"premise": example["premise"], "hypothesis": example["hypothesis"],
                         "subset": example.get("subset"), "label": LABELS[int(example["label"])],
                         "prediction": predicted, "correct": predicted == LABELS[int(example["label"])],
                         "logprobs": dict(zip(LABELS, label_scores))})
        return EvalOutput(metrics=accuracy_by_subset(rows), predictions=rows,
                          notes={"examples": {s: sum(r["subset"] == s for r in rows) for s in METRIC_OF_SUBSET}})


def accuracy_by_subset(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    metrics = {}
    for subset, metric in METRIC_OF_SUBSET.items():
        chosen = [row["correct"] for row in rows if row["subset"] == subset]
        if chosen:
            metrics[metric] = sum(chosen) / len(chosen)
    return metrics
