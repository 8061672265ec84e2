"""WikiSQL (paper Table 4, GPT-3): table schema + question -> SQL, scored by logical-form accuracy.

Paper App. C: x = {table schema, query}, y = {SQL}; the exact serialisation is not given. We use
the mlx-examples LoRA format (one public, documented choice; `wikisql/mlx_lora_subset` holds 100
of its test lines and our rendering reproduces them exactly):

    table: <table id>\\ncolumns: <header joined by ', '>\\nQ: <question>\\nA:   <- prompt
     SELECT [AGG ]<column> FROM <table id>[ WHERE <column> <op> <value> ...]<EOS>   <- target

Splits. The offline copy (a data root in the layout the README describes) has dev and test
questions but tables only for test, and no train split. So the two split policies are:
  - `test_by_table` (the default of every profile): the official TEST split divided by table id into disjoint
    table sets, `eval_fraction` of the tables (seeded shuffle, `split_seed`) form `validation`,
    the rest train; of those training tables a further `dev_fraction` forms `dev` (the
    learning-rate selection's split). No table is in two of train / dev / validation.
  - `official` (`task.split_policy=official`): `train` / `validation` (the paper's 8,421) / `test` from the hub
    (`Salesforce/wikisql`), or from a data root that has them; `dev` is `dev_fraction` of the
    training tables, held out of `train`. Offline, `validation` is dev without tables: those
    examples cannot be prompted, so they are counted as `missing_header` in the notes and scored
    wrong, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from peftrepro.errors import ConfigError, DataError
from peftrepro.interfaces import DecodingConfig, EncodedExample, EvalOutput, PromptWrap
from peftrepro.metrics.wikisql import render_sql, score_wikisql
from peftrepro.models import sequence_start
from peftrepro.tasks import data
from peftrepro.tasks.base import (
    TaskOptions,
    check_fraction,
    check_split,
    encode_pair,
    eos_id,
    generate,
    hold_out,
    parse_options,
    sample,
    text_ids,
    wrapped_prompt,
)

SPLIT_POLICIES = {"test_by_table": ("train", "dev", "validation"), "official": ("train", "dev", "validation", "test")}
LOCAL_QUESTIONS = {"validation": "dev.jsonl.gz", "test": "test.jsonl.gz"}
LOCAL_TABLES = {"test": "test.tables.jsonl.gz"}  # no dev / train tables exist offline
QUESTION_FIELDS = ("table_id", "question", "sql")
TABLE_FIELDS = ("id", "header")  # rows may legitimately be empty (no execution accuracy then)


@dataclass(frozen=True)
class WikiSQLOptions(TaskOptions):
    eval_split: str = "validation"
    max_length: int = 384  # paper D.4 sequence length for WikiSQL
    split_policy: str = "test_by_table"  # offline data has no train split; `official` = hub train/validation
    eval_fraction: float = 0.2  # test_by_table: share of the test TABLES held out for evaluation
    dev_fraction: float = 0.1  # share of the training TABLES held out as `dev` (learning-rate selection)
    split_seed: int = 0  # seed of the table shuffles and of `limit` sampling


class WikiSQLTask:
    name = "wikisql"
    primary_metric = "lf_accuracy"
    selection_metric = "lf_accuracy"  # on the dev split (learning-rate selection)
    dev_split_text = "WikiSQL, held-out tables of its training data"

    def __init__(self, data_root: str | Path | None, options: dict[str, Any] | None = None):
        self.options = parse_options(WikiSQLOptions, self.name, options)
        if self.options.split_policy not in SPLIT_POLICIES:
            raise ConfigError(f"task 'wikisql': unknown split_policy {self.options.split_policy!r}; "
                              f"valid: {sorted(SPLIT_POLICIES)}")
        check_fraction(self.name, "eval_fraction", self.options.eval_fraction)
        check_fraction(self.name, "dev_fraction", self.options.dev_fraction)
        self.splits = SPLIT_POLICIES[self.options.split_policy]
        for split in (self.options.train_split, self.options.eval_split):
            check_split(self.name, split, self.splits)
        self.data_root = data.resolve_data_root(data_root)
        self._cache: dict[str, list[dict[str, Any]]] = {}

    # --------------------------------------------------------------------- data

    def load_split(self, split: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Records {table_id, question, sql, table: {id, header, types, rows, ambiguous_rows} | None}.

        `limit` keeps a seeded random sample (in file order), so a small run still spans many tables.
        """
        check_split(self.name, split, self.splits)
        seed = self.options.split_seed
        if split in ("train", "dev"):
            if self.options.split_policy == "test_by_table":
                test = self._official("test")
                held_out = held_out_tables([ex["table_id"] for ex in test], self.options.eval_fraction, seed)
                training = [ex for ex in test if ex["table_id"] not in held_out]
            else:
                training = self._official("train")
            dev = held_out_tables([ex["table_id"] for ex in training], self.options.dev_fraction, seed)
            records = [ex for ex in training if (ex["table_id"] in dev) == (split == "dev")]
        elif self.options.split_policy == "test_by_table":  # validation: the held-out test tables
            test = self._official("test")
            held_out = held_out_tables([ex["table_id"] for ex in test], self.options.eval_fraction, seed)
            records = [ex for ex in test if ex["table_id"] in held_out]
        else:
            records = self._official(split)
        return sample(records, limit, seed)

    def _official(self, split: str) -> list[dict[str, Any]]:
        if split not in self._cache:
            self._cache[split] = data.hub_wikisql(split) if self.data_root is None else self._local(split)
        return self._cache[split]

    def _local(self, split: str) -> list[dict[str, Any]]:
        directory = self.data_root / "wikisql"
        if split not in LOCAL_QUESTIONS:
            raise DataError(f"{directory}: the offline WikiSQL copy has no {split!r} split (only dev and test); "
                            "use task.split_policy=test_by_table, or unset the data root to read the hub")
        questions = data.read_jsonl(data.require_file(directory / LOCAL_QUESTIONS[split]), QUESTION_FIELDS)
        tables: dict[str, dict[str, Any]] = {}
        if split in LOCAL_TABLES:
            path = data.require_file(directory / LOCAL_TABLES[split])
            tables = {table["id"]: table for table in data.read_jsonl(path, TABLE_FIELDS)}
        return [{**ex, "table": tables.get(ex["table_id"])} for ex in questions]

    # --------------------------------------------------------------------- encoding

    @staticmethod
    def prompt_text(example: dict[str, Any]) -> str:
        header = example["table"]["header"]
        return f"table: {example['table_id']}\ncolumns: {', '.join(header)}\nQ: {example['question']}\nA:"

    @staticmethod
    def target_text(example: dict[str, Any]) -> str:
        return " " + render_sql(example["sql"], example["table"]["header"], example["table_id"])

    def encode(self, example: dict[str, Any], tokenizer: Any, prompt: PromptWrap, max_length: int) -> EncodedExample:
        if example.get("table") is None:
            raise DataError(f"wikisql: table {example['table_id']} has no header in this data, so the question "
                            f"{example['question']!r} cannot be prompted; train with split_policy=test_by_table "
                            "or on the hub's train split")
        target = text_ids(tokenizer, self.target_text(example)) + [eos_id(tokenizer)]
        return encode_pair(text_ids(tokenizer, self.prompt_text(example)), target, prompt, max_length,
                           sequence_start(tokenizer))

    # --------------------------------------------------------------------- evaluation

    def evaluate(self, model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], prompt: PromptWrap,
                 decoding: DecodingConfig) -> EvalOutput:
        promptable = [i for i, ex in enumerate(examples) if ex.get("table") is not None]
        budget = self.options.max_length - decoding.max_new_tokens
        start = sequence_start(tokenizer)
        contexts = [wrapped_prompt(text_ids(tokenizer, self.prompt_text(examples[i])), prompt, budget, start)
                    for i in promptable]
        generated = generate(model, tokenizer, contexts, decoding, desc="wikisql decode")
        texts: list[str | None] = [None] * len(examples)
        for i, ids in zip(promptable, generated):
            texts[i] = tokenizer.decode(ids, skip_special_tokens=True).split("\n")[0].strip()
        scores = score_wikisql(texts, examples)
        rows = [{"table_id": ex["table_id"], "question": ex["question"], "prediction": text,
                 "gold": self.target_text(ex).strip() if ex.get("table") else None, **row}
                for ex, text, row in zip(examples, texts, scores.rows)]
        notes = {**scores.notes, "split_policy": self.options.split_policy}
        if self.options.split_policy == "test_by_table":
            notes |= {"eval_fraction": self.options.eval_fraction, "split_seed": self.options.split_seed}
        return EvalOutput(metrics=scores.metrics, predictions=rows, notes=notes)


def held_out_tables(table_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A held-out table set: a seeded shuffle of the distinct ids, first `fraction` of them."""
    return hold_out(table_ids, fraction, seed)
