"""WikiSQL: SQL text <-> structure, logical-form and execution accuracy, split policy, decoding."""

from __future__ import annotations

import logging

import pytest

from peftrepro.errors import ConfigError, DataError
from peftrepro.interfaces import NO_PROMPT_WRAP, DecodingConfig
from peftrepro.metrics.wikisql import (
    TableDatabase,
    logical_form,
    parse_sql,
    render_sql,
    same_logical_form,
    score_wikisql,
)
from peftrepro.tasks import make_task

HEADER = ["Player", "No.", "Years in Toronto", "Pick", "Pick #", "Viewers' selection"]
TABLE = {"id": "1-1-1", "header": HEADER, "types": ["text", "real", "text", "real", "real", "text"],
         "rows": [["Jalen Rose", "5", "2003-06", "1", "10", "Cake"],
                  ["Terrence Ross", "31", "2012-present", "2", "20", "Pie"],
                  ["Shawn Respert", "31", "1997-98", "3", "30", "Cake"]],
         "ambiguous_rows": []}


@pytest.mark.parametrize("sql, text", [
    ({"sel": 0, "agg": 0, "conds": [[1, 0, 31]]}, "SELECT Player FROM 1-1-1 WHERE No. = 31"),
    ({"sel": 1, "agg": 3, "conds": []}, "SELECT COUNT No. FROM 1-1-1"),
    ({"sel": 4, "agg": 1, "conds": [[3, 2, 2.5], [0, 0, "Jalen Rose"]]},
     "SELECT MAX Pick # FROM 1-1-1 WHERE Pick < 2.5 AND Player = 'Jalen Rose'"),
    ({"sel": 2, "agg": 0, "conds": [[0, 0, "Jermaine O'Neal AND Pick = 'x"]]},  # quote and AND inside a value
     "SELECT Years in Toronto FROM 1-1-1 WHERE Player = 'Jermaine O'Neal AND Pick = 'x'"),
    ({"sel": 0, "agg": 0, "conds": [[5, 0, "nan"], [3, 1, 1]]},
     "SELECT Player FROM 1-1-1 WHERE Viewers' selection = 'nan' AND Pick > 1"),
])
def test_render_and_parse_round_trip(sql, text):
    assert render_sql(sql, HEADER, "1-1-1") == text
    parsed = parse_sql(text, HEADER)
    assert parsed == sql or same_logical_form(parsed, sql)


@pytest.mark.parametrize("text, expected", [
    ("select player from t where no. = '31'", {"sel": 0, "agg": 0, "conds": [[1, 0, "31"]]}),  # case, quotes
    ("SELECT AVG No.  FROM t  WHERE  Player='Jalen Rose';", {"sel": 1, "agg": 5, "conds": [[0, 0, "Jalen Rose"]]}),
    ('SELECT Player FROM t WHERE Years in Toronto = "2003-06"', {"sel": 0, "agg": 0, "conds": [[2, 0, "2003-06"]]}),
])
def test_parser_tolerates_harmless_variation(text, expected):
    assert parse_sql(text, HEADER) == expected


@pytest.mark.parametrize("text", [
    "", "Jalen Rose", "SELECT Coach FROM t", "SELECT Player", "SELECT Player FROM t WHERE Coach = 'x'",
    "SELECT Player FROM t WHERE Player = 'unterminated", "SELECT Player FROM t WHERE Player ~ 'x'",
    "SELECT Player FROM t WHERE",
])
def test_unparseable_text_gives_none(text):
    assert parse_sql(text, HEADER) is None


@pytest.mark.parametrize("predicted, gold, same", [
    # the official Query.__eq__: (column, operator, str(value).lower()), nothing else normalised
    ({"sel": 0, "agg": 0, "conds": [[1, 0, 31]]}, {"sel": 0, "agg": 0, "conds": [[1, 0, "31"]]}, True),
    ({"sel": 0, "agg": 0, "conds": [[0, 0, "JALEN Rose"]]}, {"sel": 0, "agg": 0, "conds": [[0, 0, "Jalen Rose"]]}, True),
    ({"sel": 0, "agg": 0, "conds": [[1, 0, 31.0]]}, {"sel": 0, "agg": 0, "conds": [[1, 0, 31]]}, False),
    ({"sel": 0, "agg": 0, "conds": [[0, 0, "jalen  ROSE "]]}, {"sel": 0, "agg": 0, "conds": [[0, 0, "Jalen Rose"]]}, False),
    ({"sel": 0, "agg": 0, "conds": [[1, 0, 5], [2, 0, "x"]]},
     {"sel": 0, "agg": 0, "conds": [[2, 0, "X"], [1, 0, 5]]}, True),  # conditions are a set
    ({"sel": 1, "agg": 0, "conds": []}, {"sel": 0, "agg": 0, "conds": []}, False),
    ({"sel": 0, "agg": 3, "conds": []}, {"sel": 0, "agg": 0, "conds": []}, False),
    ({"sel": 0, "agg": 0, "conds": [[1, 1, 5]]}, {"sel": 0, "agg": 0, "conds": [[1, 0, 5]]}, False),
    ({"sel": 0, "agg": 0, "conds": [[1, 0, 5]]}, {"sel": 0, "agg": 0, "conds": [[1, 0, 5], [2, 0, "x"]]}, False),
    (None, {"sel": 0, "agg": 0, "conds": []}, False),
])
def test_logical_form_equality(predicted, gold, same):
    assert same_logical_form(predicted, gold) is same


@pytest.mark.parametrize("sql, result", [
    ({"sel": 0, "agg": 0, "conds": [[1, 0, 31]]}, ["terrence ross", "shawn respert"]),
    ({"sel": 0, "agg": 0, "conds": [[0, 0, "JALEN ROSE"]]}, ["jalen rose"]),  # case-insensitive, as the official DB
    ({"sel": 1, "agg": 3, "conds": [[5, 0, "cake"]]}, [2]),
    ({"sel": 4, "agg": 4, "conds": [[3, 1, "1"]]}, [50.0]),  # a text value on a real column becomes a number
    ({"sel": 4, "agg": 1, "conds": [[0, 0, "Nobody"]]}, [None]),
])
def test_execution_on_the_in_memory_table(sql, result):
    assert TableDatabase().execute(TABLE, sql) == result


def test_score_counts_unparseable_missing_header_and_ambiguous_tables(caplog):
    gold = {"sel": 0, "agg": 0, "conds": [[1, 0, 31]]}
    ambiguous = {**TABLE, "id": "1-1-2", "ambiguous_rows": [0]}
    examples = [{"sql": gold, "table": TABLE},  # exact
                {"sql": gold, "table": TABLE},  # different form, same execution result
                {"sql": gold, "table": TABLE},  # garbage
                {"sql": gold, "table": ambiguous},  # exact, but excluded from execution accuracy
                {"sql": gold, "table": None}]  # no header: could not be prompted
    predictions = ["SELECT Player FROM t WHERE No. = 31", "SELECT Player FROM t WHERE No. > 30",
                   "SELECT SELECT", "SELECT Player FROM t WHERE No. = '31'", None]
    with caplog.at_level(logging.INFO, logger="peftrepro.metrics.wikisql"):
        scores = score_wikisql(predictions, examples)
    # one line for the run, not one per output (each is in the predictions file)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == [
        "wikisql: 1 of 5 outputs are not SQL of the table's columns; scored wrong"]
    assert scores.metrics == {"lf_accuracy": pytest.approx(2 / 5), "ex_accuracy": pytest.approx(2 / 3)}
    assert [row["lf_correct"] for row in scores.rows] == [True, False, False, True, False]
    assert [row["ex_correct"] for row in scores.rows] == [True, True, False, None, None]
    assert scores.notes == {"examples": 5, "unparseable": 1, "missing_header": 1, "ex_evaluated": 3,
                                 "ex_excluded_ambiguous_rows": 1, "ex_no_rows": 0, "ex_gold_errors": 0}


# ----------------------------------------------------------------------------- task


def test_fixture_gold_queries_round_trip(fixture_root):
    task = make_task("wikisql", fixture_root)
    examples = task.load_split("train") + task.load_split("validation")
    for example in examples:
        parsed = parse_sql(task.target_text(example), example["table"]["header"])
        assert logical_form(parsed) == logical_form(example["sql"]), task.target_text(example)


def test_test_by_table_split_is_disjoint_seeded_and_complete(fixture_root):
    task = make_task("wikisql", fixture_root, {"eval_fraction": 0.25, "dev_fraction": 0.2, "split_seed": 3})
    train, dev, held_out = task.load_split("train"), task.load_split("dev"), task.load_split("validation")
    train_tables, eval_tables = {e["table_id"] for e in train}, {e["table_id"] for e in held_out}
    dev_tables = {e["table_id"] for e in dev}
    assert train_tables.isdisjoint(eval_tables) and len(eval_tables) == 2
    assert dev_tables and dev_tables.isdisjoint(train_tables) and dev_tables.isdisjoint(eval_tables)
    assert len(train) + len(dev) + len(held_out) == len(
        make_task("wikisql", fixture_root, {"split_policy": "official"}).load_split("test"))
    again = make_task("wikisql", fixture_root, {"eval_fraction": 0.25, "split_seed": 3}).load_split("validation")
    assert again == held_out
    other = make_task("wikisql", fixture_root, {"eval_fraction": 0.25, "split_seed": 4}).load_split("validation")
    assert {e["table_id"] for e in other} != eval_tables
    sample = task.load_split("train", limit=10)
    assert len(sample) == 10 and len({e["table_id"] for e in sample}) > 2  # spread over tables


@pytest.mark.parametrize("options, message", [
    ({"split_policy": "random"}, "unknown split_policy"),
    ({"eval_fraction": 1.5}, "eval_fraction"),
    ({"dev_fraction": 0.0}, "dev_fraction"),
    ({"eval_split": "test"}, "unknown split 'test'"),  # the test split IS the pool under test_by_table
])
def test_bad_split_options(fixture_root, options, message):
    with pytest.raises(ConfigError, match=message):
        make_task("wikisql", fixture_root, options)


def test_offline_official_policy_has_no_train_split(fixture_root):
    with pytest.raises(DataError, match="no 'train' split.*test_by_table"):
        make_task("wikisql", fixture_root, {"split_policy": "official"}).load_split("train")


def test_questions_without_header_are_counted_not_dropped(fixture_root, tokenizer):
    from peftrepro.tasks.testing import build_tiny_model

    task = make_task("wikisql", fixture_root, {"split_policy": "official", "eval_split": "validation"})
    dev = task.load_split("validation", limit=4)
    assert all(example["table"] is None for example in dev)
    with pytest.raises(DataError, match="has no header"):
        task.encode(dev[0], tokenizer, NO_PROMPT_WRAP, 384)
    output = task.evaluate(build_tiny_model(tokenizer), tokenizer, dev, NO_PROMPT_WRAP, DecodingConfig(max_new_tokens=4))
    assert output.notes["missing_header"] == 4 and output.metrics["lf_accuracy"] == 0.0
    assert len(output.predictions) == 4


def test_memorised_model_decodes_exact_queries(fixture_root, tokenizer, memorise):
    task = make_task("wikisql", fixture_root)
    examples = task.load_split("validation")[:2]
    model = memorise(tokenizer, [task.encode(e, tokenizer, NO_PROMPT_WRAP, 384) for e in examples], steps=200)
    output = task.evaluate(model, tokenizer, examples, NO_PROMPT_WRAP, DecodingConfig(max_new_tokens=48, batch_size=2))
    assert [row["prediction"] for row in output.predictions] == [task.target_text(e).strip() for e in examples]
    assert output.metrics["lf_accuracy"] == 1.0
    assert output.notes["split_policy"] == "test_by_table" and output.notes["unparseable"] == 0
