"""E2E NLG Challenge (paper Table 3): meaning representation -> restaurant description.

Format, as the authors' repo (examples/NLG: format_converting_e2e.py, gpt2_encode.py --add_bos
--add_eos) builds it: context = the MR followed by a separator (their EOS token, id 50256);
completion = ' ' + reference + EOS. The loss falls on the completion only; the final EOS teaches
the model to stop. The MR is the official CSV string (`name[The Vaults], eatType[pub], ...`); the
repo's text files hold the same content in a `name : The Vaults | Type : pub` spelling.

Evaluation follows gpt2_decode.py --ref_type e2e: references are grouped by identical MR (630
test MRs, 4,693 references), one prediction is decoded per distinct MR, cut at EOS and at the
first blank line, and the official E2E metrics score it (`peftrepro.metrics.score_e2e`). Each
prediction row keeps its MR's share of every corpus score (`segment`), so that the report can
bootstrap the evaluation-set error over MRs from the saved predictions alone.

Splits: the official train / dev / test files; `dev` is the learning-rate selection's split. A
limit keeps a seeded sample (`sample_seed`): of rows on train, of distinct MRs on dev and test
(an MR always keeps all its references).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from peftrepro.interfaces import DecodingConfig, EncodedExample, EvalOutput, PromptWrap
from peftrepro.models import sequence_start
from peftrepro.tasks import data
from peftrepro.tasks.base import (
    TaskOptions,
    check_split,
    encode_pair,
    eos_id,
    generate,
    parse_options,
    sample,
    text_ids,
    wrapped_prompt,
)

EOS_SEPARATOR = "<eos>"  # separator value meaning "the tokenizer's EOS token" (the authors' choice)
LOCAL_FILES = {"train": "train.csv.gz", "dev": "dev.csv.gz", "test": "test.csv.gz"}
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


@dataclass(frozen=True)
class E2EOptions(TaskOptions):
    # the paper reports the test set (Table 3) and its best epoch; the eval split follows it
    eval_split: str = "test"
    max_length: int = 512  # authors' --seq_len 512
    separator: str = EOS_SEPARATOR  # between MR and reference: "<eos>" = tokenizer EOS, else literal text
    sample_seed: int = 0  # seed of a limited split's sample (rows on train, MRs on dev / test)


class E2ETask:
    name = "e2e"
    primary_metric = "bleu"
    selection_metric = "bleu"  # on the dev split (learning-rate selection)
    dev_split_text = "E2E, its official validation set, none of whose MRs is a test MR"
    splits = tuple(LOCAL_FILES)

    def __init__(self, data_root: str | Path | None, options: dict[str, Any] | None = None):
        self.options = parse_options(E2EOptions, self.name, options)
        self.data_root = data.resolve_data_root(data_root)
        for split in (self.options.train_split, self.options.eval_split):
            check_split(self.name, split, self.splits)

    # --------------------------------------------------------------------- data

    def load_split(self, split: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows {mr, ref} in file order.

        `limit` keeps a seeded sample (`sample_seed`): of rows on the train split, of distinct MRs on
        dev / test, so that an evaluated MR always keeps all of its references.
        """
        check_split(self.name, split, self.splits)
        if self.data_root is None:
            rows = data.hub_e2e(HUB_SPLITS[split])
        else:
            rows = data.read_csv(data.require_file(self.data_root / "e2e" / LOCAL_FILES[split]), ("mr", "ref"))
        if split == "train":
            return sample(rows, limit, self.options.sample_seed)
        keep = set(sample(list(dict.fromkeys(row["mr"] for row in rows)), limit, self.options.sample_seed))
        return [row for row in rows if row["mr"] in keep]

    # --------------------------------------------------------------------- encoding

    def prompt_ids(self, mr: str, tokenizer: Any) -> list[int]:
        if self.options.separator == EOS_SEPARATOR:
            return text_ids(tokenizer, mr) + [eos_id(tokenizer)]
        return text_ids(tokenizer, mr + self.options.separator)

    def target_ids(self, ref: str, tokenizer: Any) -> list[int]:
        return text_ids(tokenizer, " " + ref) + [eos_id(tokenizer)]

    def encode(self, example: dict[str, Any], tokenizer: Any, prompt: PromptWrap, max_length: int) -> EncodedExample:
        return encode_pair(self.prompt_ids(example["mr"], tokenizer), self.target_ids(example["ref"], tokenizer),
                           prompt, max_length, sequence_start(tokenizer))

    # --------------------------------------------------------------------- evaluation

    def evaluate(self, model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], prompt: PromptWrap,
                 decoding: DecodingConfig, score: bool = True) -> EvalOutput:
        """One prediction per distinct MR; scored now, or (score=False) left to `score` later."""
        references = group_references(examples)
        mrs = list(references)
        budget = self.options.max_length - decoding.max_new_tokens
        start = sequence_start(tokenizer)
        contexts = [wrapped_prompt(self.prompt_ids(mr, tokenizer), prompt, budget, start) for mr in mrs]
        generated = generate(model, tokenizer, contexts, decoding, desc="e2e decode")
        predictions = [clean_prediction(tokenizer.decode(ids, skip_special_tokens=True)) for ids in generated]
        rows = [{"mr": mr, "prediction": pred, "references": references[mr]} for mr, pred in zip(mrs, predictions)]
        if not score:
            return EvalOutput(metrics={}, predictions=rows, notes=prediction_notes(rows), scored=False)
        metrics, notes, rows = self.score(rows)
        return EvalOutput(metrics=metrics, predictions=rows, notes=notes)

    def score(self, predictions: Sequence[dict[str, Any]]
              ) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]]]:
        """The five official metrics of prediction rows {mr, prediction, references}, notes, and the
        rows with each MR's share of the scores added (`segment`, for the report's bootstrap)."""
        from peftrepro.metrics import (
            score_e2e_segments,  # late: the metric stack (Java, pycocoevalcap) loads on use
        )

        metrics, segments = score_e2e_segments([row["prediction"] for row in predictions],
                                               [row["references"] for row in predictions])
        missing = sorted(k for k, v in metrics.items() if v is None)
        rows = [{**row, "segment": segment} for row, segment in zip(predictions, segments)]
        return {k: v for k, v in metrics.items() if v is not None}, prediction_notes(predictions) | {
            "missing_metrics": missing}, rows

    def missing_scoring_tools(self) -> list[str]:
        # shutil, not the metric stack: a machine that defers scoring may lack pycocoevalcap too
        return [] if shutil.which("java") else ["java (METEOR and the PTB tokenizer of the official scorer)"]


def prediction_notes(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    return {"mrs": len(rows), "references": sum(len(row["references"]) for row in rows),
            "empty_predictions": sum(1 for row in rows if not row["prediction"])}


def group_references(examples: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """MR -> its references, MRs in first-seen order (gpt2_decode.py --ref_type e2e)."""
    grouped: dict[str, list[str]] = {}
    for example in examples:
        grouped.setdefault(example["mr"], []).append(example["ref"])
    return grouped


def clean_prediction(text: str) -> str:
    """Cut at the first blank line and flatten to one line, as the authors' gpt2_decode.py does."""
    return " ".join(text.split("\n\n")[0].split())
