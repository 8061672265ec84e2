"""The fair protocol's splits: every task's dev split (the learning-rate selection's) is carved from
training data only and shares no example with the evaluation set (nor, on WikiSQL, a table), on the
fixtures and on the real data where it is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from peftrepro.tasks import make_task

# (task, options, the evaluation split the tables use)
CASES = [
    ("e2e", {}, "test"),
    ("mnli", {}, "validation_matched"),
    ("mnli", {}, "validation"),
    ("wikisql", {}, "validation"),
]


def example_key(task: str, row: dict) -> tuple:
    if task == "e2e":
        return (row["mr"],)
    if task == "mnli":
        return (row["premise"], row["hypothesis"])
    return (row["table_id"], row["question"])


def assert_dev_is_apart(root: Path, task_name: str, options: dict, eval_split: str) -> None:
    task = make_task(task_name, root, options)
    dev, train, evaluation = (task.load_split(split) for split in ("dev", "train", eval_split))
    dev_keys = {example_key(task_name, row) for row in dev}
    assert dev and dev_keys.isdisjoint(example_key(task_name, row) for row in evaluation)
    if task_name == "mnli":  # carved from the training file by line (the fixture file repeats pairs)
        assert {row["id"] for row in dev}.isdisjoint(row["id"] for row in train)
    if task_name == "wikisql":
        dev_tables = {row["table_id"] for row in dev}
        assert dev_tables.isdisjoint(row["table_id"] for row in evaluation)
        assert dev_tables.isdisjoint(row["table_id"] for row in train)


@pytest.mark.parametrize("task, options, eval_split", CASES)
def test_dev_split_shares_nothing_with_the_evaluation_set_on_the_fixtures(fixture_root, task, options, eval_split):
    assert_dev_is_apart(fixture_root, task, options, eval_split)


REAL = os.environ.get("PEFTREPRO_DATA_ROOT")


@pytest.mark.skipif(not REAL or not Path(REAL, "mnli").is_dir(), reason="needs the real data (PEFTREPRO_DATA_ROOT)")
@pytest.mark.parametrize("task, options, eval_split", CASES)
def test_dev_split_shares_nothing_with_the_evaluation_set_on_the_real_data(task, options, eval_split):
    assert_dev_is_apart(Path(REAL), task, options, eval_split)


def test_mnli_dev_is_its_fraction_of_the_training_pairs(fixture_root):
    task = make_task("mnli", fixture_root, {"dev_fraction": 0.25})
    dev, train = task.load_split("dev"), task.load_split("train")
    assert len(dev) == round(0.25 * (len(dev) + len(train))) and {row["subset"] for row in dev} == {"dev"}
    assert len({row["id"] for row in dev + train}) == len(dev) + len(train)  # ids name file lines
