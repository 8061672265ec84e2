"""MultiNLI: the label is the verbalisation with the highest log-likelihood; accuracy per subset."""

from __future__ import annotations

import pytest
import torch

from peftrepro.errors import ConfigError
from peftrepro.interfaces import NO_PROMPT_WRAP, DecodingConfig
from peftrepro.tasks import make_task
from peftrepro.tasks.base import sequence_logprobs
from peftrepro.tasks.mnli import accuracy_by_subset
from peftrepro.tasks.testing import build_tiny_model


def _unbatched_logprob(model, context, target):
    ids = torch.tensor([context + target])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(context) - 1 + i, token]) for i, token in enumerate(target))


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_batched_scores_equal_one_by_one_scores(tokenizer, architecture):
    model = build_tiny_model(tokenizer, architecture).eval()
    pairs = [([5, 6, 7, 8, 9, 10], [11]), ([5, 6], [12, 13, 14]), ([20, 21, 22], [11, 12])]
    batched = sequence_logprobs(model, tokenizer, pairs, batch_size=3)
    with torch.no_grad():
        expected = [_unbatched_logprob(model, ctx, tgt) for ctx, tgt in pairs]
    assert batched == pytest.approx(expected, abs=1e-4)


def test_validation_loads_matched_and_mismatched(fixture_root):
    task = make_task("mnli", fixture_root)
    rows = task.load_split("validation", limit=5)
    assert [r["subset"] for r in rows] == ["matched"] * 5 + ["mismatched"] * 5
    assert all(r["label_text"] == ("entailment", "neutral", "contradiction")[r["label"]] for r in rows)


def test_accuracy_is_reported_per_subset():
    rows = [{"subset": "matched", "correct": True}, {"subset": "matched", "correct": False},
            {"subset": "mismatched", "correct": True}]
    assert accuracy_by_subset(rows) == {"accuracy_m": 0.5, "accuracy_mm": 1.0}


def test_memorised_model_predicts_the_trained_labels(fixture_root, tokenizer, memorise):
    task = make_task("mnli", fixture_root)
    train = task.load_split("train")
    examples = [next(e for e in train if e["label"] == label) for label in range(3)]
    model = memorise(tokenizer, [task.encode(e, tokenizer, NO_PROMPT_WRAP, 256) for e in examples], steps=60)
    tagged = [{**e, "subset": subset} for e, subset in zip(examples, ["matched", "matched", "mismatched"])]
    output = task.evaluate(model, tokenizer, tagged, NO_PROMPT_WRAP, DecodingConfig(batch_size=2))
    assert [row["prediction"] for row in output.predictions] == ["entailment", "neutral", "contradiction"]
    assert output.metrics == {"accuracy_m": 1.0, "accuracy_mm": 1.0}
    assert output.notes["examples"] == {"matched": 2, "mismatched": 1}


@pytest.mark.parametrize("options, message", [
    ({"label_words": {"entailment": " Yes", "neutral": " Yes", "contradiction": " No"}}, "distinct"),
    ({"label_words": {"yes": " Yes"}}, "label_words"),
    ({"prompt_template": "{premise} only"}, "hypothesis"),
])
def test_bad_prompt_options(fixture_root, options, message):
    with pytest.raises(ConfigError, match=message):
        make_task("mnli", fixture_root, options)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_one_forward_pass_per_example_scores_the_labels_as_one_pass_per_label(fixture_root, tokenizer, architecture):
    """Single-token label words: the next-token distribution after the prompt gives every label's
    log-likelihood at once; the same numbers and the same predictions as scoring each pair."""
    from peftrepro.tasks.base import text_ids, wrapped_prompt
    from peftrepro.tasks.mnli import LABELS, label_logprobs

    words = {"entailment": "T", "neutral": "N", "contradiction": "F"}  # one byte-level token each
    task = make_task("mnli", fixture_root, {"label_words": words})
    model = build_tiny_model(tokenizer, architecture).eval()
    rows = task.load_split("validation_matched", limit=7)
    contexts = [wrapped_prompt(text_ids(tokenizer, task.prompt_text(r)), NO_PROMPT_WRAP, 500) for r in rows]
    label_ids = [text_ids(tokenizer, words[label]) for label in LABELS]
    assert all(len(ids) == 1 for ids in label_ids)
    fast = label_logprobs(model, tokenizer, contexts, label_ids, batch_size=3)
    pairs = [(context, ids) for context in contexts for ids in label_ids]
    slow = sequence_logprobs(model, tokenizer, pairs, batch_size=4)
    assert [score for row in fast for score in row] == pytest.approx(slow, abs=1e-5)
    argmax = lambda scores: max(range(3), key=scores.__getitem__)  # noqa: E731
    assert [argmax(row) for row in fast] == [argmax(slow[3 * i:3 * i + 3]) for i in range(len(rows))]
