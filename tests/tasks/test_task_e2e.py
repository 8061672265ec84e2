"""E2E: loading, grouping by MR, decoding and the hand-off to the official scorer."""

from __future__ import annotations

import pytest

import peftrepro.metrics
from peftrepro.interfaces import NO_PROMPT_WRAP, DecodingConfig
from peftrepro.tasks import make_task
from peftrepro.tasks.e2e import clean_prediction, group_references


@pytest.fixture
def recorded_scorer(monkeypatch):
    """Replaces the official metric stack (Java, seconds) by a recorder: these tests check our side."""
    calls = []

    def score_e2e_segments(predictions, references):
        calls.append((predictions, references))
        return ({"bleu": 0.5, "nist": 1.0, "meteor": None, "rouge_l": 0.25, "cider": 0.1},
                [{"mteval": [1.0]} for _ in predictions])

    monkeypatch.setattr(peftrepro.metrics, "score_e2e_segments", score_e2e_segments, raising=False)
    return calls


def test_references_are_grouped_by_mr_in_order():
    rows = [{"mr": "a", "ref": "1"}, {"mr": "b", "ref": "2"}, {"mr": "a", "ref": "3"}]
    assert group_references(rows) == {"a": ["1", "3"], "b": ["2"]}


@pytest.mark.parametrize("raw, cleaned", [
    ("Aromi is a pub.", "Aromi is a pub."),
    (" Aromi is a pub.\n\nname[Cotto] junk", "Aromi is a pub."),
    ("Aromi is\na  pub. ", "Aromi is a pub."),
    ("", ""),
])
def test_predictions_are_cut_at_the_first_blank_line(raw, cleaned):
    assert clean_prediction(raw) == cleaned


def test_eval_limit_samples_mrs_and_keeps_all_their_references(fixture_root):
    task = make_task("e2e", fixture_root)
    full = group_references(task.load_split("test"))
    limited = group_references(task.load_split("test", limit=3))
    assert len(limited) == 3 and list(limited) != list(full)[:3]  # a seeded sample, not the file's first MRs
    assert [mr for mr in full if mr in limited] == list(limited)  # kept in file order
    assert all(limited[mr] == full[mr] for mr in limited)
    assert group_references(task.load_split("test", limit=3)) == limited  # seeded: the same sample again
    other = make_task("e2e", fixture_root, {"sample_seed": 1})
    assert list(group_references(other.load_split("test", limit=3))) != list(limited)
    train = task.load_split("train", limit=5)
    assert len(train) == 5 and train != task.load_split("train")[:5]  # rows on the train split, sampled


def test_evaluate_decodes_one_prediction_per_mr(fixture_root, tokenizer, recorded_scorer):
    from peftrepro.tasks.testing import build_tiny_model

    task = make_task("e2e", fixture_root)
    examples = task.load_split("test", limit=4)
    output = task.evaluate(build_tiny_model(tokenizer), tokenizer, examples, NO_PROMPT_WRAP,
                           DecodingConfig(max_new_tokens=5, batch_size=3))
    [(predictions, references)] = recorded_scorer
    grouped = group_references(examples)
    assert references == list(grouped.values()) and len(predictions) == 4
    assert [row["mr"] for row in output.predictions] == list(grouped)
    assert [row["references"] for row in output.predictions] == references
    assert output.metrics == {"bleu": 0.5, "nist": 1.0, "rouge_l": 0.25, "cider": 0.1}
    assert all(row["segment"] == {"mteval": [1.0]} for row in output.predictions)
    assert output.notes["missing_metrics"] == ["meteor"] and output.notes["mrs"] == 4


@pytest.mark.parametrize("architecture, decoding", [
    ("gpt2", DecodingConfig(num_beams=1, max_new_tokens=60, batch_size=2)),
    ("llama", DecodingConfig(num_beams=3, length_penalty=0.9, no_repeat_ngram_size=0, max_new_tokens=60,
                             batch_size=2)),
])
def test_memorised_model_reproduces_its_references(fixture_root, tokenizer, recorded_scorer, memorise,
                                                    architecture, decoding):
    """Two MRs of different lengths share a left-padded batch; each decodes its own reference."""
    task = make_task("e2e", fixture_root)
    rows = task.load_split("train")
    examples = [rows[0], next(r for r in rows if r["mr"] != rows[0]["mr"])]
    assert len(task.prompt_ids(examples[0]["mr"], tokenizer)) != len(task.prompt_ids(examples[1]["mr"], tokenizer))
    model = memorise(tokenizer, [task.encode(e, tokenizer, NO_PROMPT_WRAP, 512) for e in examples],
                     architecture=architecture)
    output = task.evaluate(model, tokenizer, examples, NO_PROMPT_WRAP, decoding)
    assert [row["prediction"] for row in output.predictions] == [e["ref"] for e in examples]
