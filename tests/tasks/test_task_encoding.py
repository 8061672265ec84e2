"""Encoding is shared by the three tasks: the loss falls exactly on the target tokens."""

from __future__ import annotations

import pytest

from peftrepro.interfaces import IGNORE_INDEX, NO_PROMPT_WRAP, PromptWrap
from peftrepro.tasks import TASKS, make_task
from peftrepro.tasks.base import encode_pair

EXPECTED_TARGET = {  # what the labelled tokens must decode to, per task
    "e2e": lambda task, ex: " " + ex["ref"] + "<|endoftext|>",
    "wikisql": lambda task, ex: task.target_text(ex) + "<|endoftext|>",
    "mnli": lambda task, ex: task.label_words[ex["label_text"]],
}


def _split_by_labels(encoded):
    context = [t for t, label in zip(encoded.input_ids, encoded.labels) if label == IGNORE_INDEX]
    target = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    return context, target


@pytest.mark.parametrize("name", sorted(TASKS))
def test_labels_cover_exactly_the_target(fixture_root, tokenizer, name):
    task = make_task(name, fixture_root)
    for example in task.load_split(task.options.train_split)[:5]:
        encoded = task.encode(example, tokenizer, NO_PROMPT_WRAP, task.options.max_length)
        context, target = _split_by_labels(encoded)
        assert encoded.input_ids == context + target  # the target is one contiguous tail
        assert encoded.labels[len(context):] == target
        assert tokenizer.decode(target) == EXPECTED_TARGET[name](task, example)


def test_e2e_context_is_mr_then_eos(fixture_root, tokenizer):
    task = make_task("e2e", fixture_root)
    example = task.load_split("train")[0]
    context, _ = _split_by_labels(task.encode(example, tokenizer, NO_PROMPT_WRAP, 512))
    assert tokenizer.decode(context) == example["mr"] + "<|endoftext|>"
    literal = make_task("e2e", fixture_root, {"separator": " ||"})
    context, _ = _split_by_labels(literal.encode(example, tokenizer, NO_PROMPT_WRAP, 512))
    assert tokenizer.decode(context) == example["mr"] + " ||"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_virtual_tokens_wrap_the_prompt(fixture_root, tokenizer, name):
    task = make_task(name, fixture_root)
    example = task.load_split(task.options.train_split)[0]
    wrap = PromptWrap(prefix_ids=(9001, 9002), infix_ids=(9003,))
    plain = task.encode(example, tokenizer, NO_PROMPT_WRAP, task.options.max_length)
    wrapped = task.encode(example, tokenizer, wrap, task.options.max_length)
    plain_context, target = _split_by_labels(plain)
    assert wrapped.input_ids == [9001, 9002, *plain_context, 9003, *target]
    assert _split_by_labels(wrapped)[1] == target


@pytest.mark.parametrize("max_length, expected_ids, expected_labels", [
    (20, [1, 2, 3, 4, 5, 6, 7, 8], [-100] * 5 + [6, 7, 8]),  # fits: unchanged
    (6, [3, 4, 5, 6, 7, 8], [-100] * 3 + [6, 7, 8]),  # prompt loses its start
    (3, [6, 7, 8], [6, 7, 8]),  # no room for the prompt
    (2, [6, 7], [6, 7]),  # target loses its end
])
def test_truncation_keeps_the_target(max_length, expected_ids, expected_labels):
    encoded = encode_pair([1, 2, 3, 4, 5], [6, 7, 8], NO_PROMPT_WRAP, max_length)
    assert encoded.input_ids == expected_ids and encoded.labels == expected_labels


@pytest.mark.parametrize("max_length, expected_ids", [
    (20, [90, 91, 1, 2, 3, 4, 5, 92, 6, 7, 8]),
    (6, [90, 91, 3, 4, 5, 92, 6, 7, 8]),  # the same text as without the wrap
    (2, [90, 91, 92, 6, 7]),
])
def test_virtual_tokens_come_on_top_of_max_length(max_length, expected_ids):
    # more virtual tokens than max_length: the example still keeps max_length tokens of its own
    wrap = PromptWrap(prefix_ids=(90, 91), infix_ids=(92,))
    encoded = encode_pair([1, 2, 3, 4, 5], [6, 7, 8], wrap, max_length)
    assert encoded.input_ids == expected_ids
    assert [t for t in encoded.input_ids if t < 90] == encode_pair([1, 2, 3, 4, 5], [6, 7, 8], NO_PROMPT_WRAP,
                                                                   max_length).input_ids
