"""Encoding is shared by the three tasks: the loss falls exactly on the target tokens."""

from __future__ import annotations

import pytest
import torch

from peftrepro.interfaces import IGNORE_INDEX, NO_PROMPT_WRAP, DecodingConfig, PromptWrap
from peftrepro.models import describe, sequence_start
from peftrepro.tasks import TASKS, make_task
from peftrepro.tasks.base import encode_pair, generate, wrapped_prompt
from peftrepro.tasks.testing import build_tiny_model, build_tiny_tokenizer

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


# ---- a tokenizer that opens every text with a BOS (Llama, Gemma) ---------------------------------

BOS = "<s>"


@pytest.fixture(scope="module")
def bos_tokenizer():
    """The tiny tokenizer, opening texts with its own BOS as Llama's does (`<s> $A`)."""
    from tokenizers import processors

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"bos_token": BOS})
    bos = tokenizer.convert_tokens_to_ids(BOS)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A",
                                                                                special_tokens=[(BOS, bos)])
    return tokenizer


def test_sequence_start_is_what_the_tokenizer_opens_texts_with(tokenizer, bos_tokenizer):
    assert sequence_start(tokenizer) == ()  # GPT-2 style: nothing, though its bos_token is set
    assert sequence_start(bos_tokenizer) == (bos_tokenizer.convert_tokens_to_ids(BOS),)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_bos_opens_each_training_sequence_once_after_the_virtual_prefix(fixture_root, tokenizer, bos_tokenizer,
                                                                          name):
    task = make_task(name, fixture_root)
    example = task.load_split(task.options.train_split)[0]
    wrap = PromptWrap(prefix_ids=(9001, 9002), infix_ids=(9003,))
    plain = task.encode(example, tokenizer, wrap, task.options.max_length)
    opened = task.encode(example, bos_tokenizer, wrap, task.options.max_length)
    bos = bos_tokenizer.convert_tokens_to_ids(BOS)
    assert opened.input_ids == [9001, 9002, bos, *plain.input_ids[2:]]
    assert opened.labels == [IGNORE_INDEX, *plain.labels]


@pytest.mark.parametrize("name,stage", [("e2e", "generate"), ("wikisql", "generate"), ("mnli", "label_logprobs")])
def test_a_bos_opens_each_evaluation_context(fixture_root, bos_tokenizer, monkeypatch, name, stage):
    task = make_task(name, fixture_root)
    seen = []

    def capture(model, tokenizer, contexts, *args, **kwargs):
        seen.extend(contexts)
        raise StopIteration  # the contexts are all this test needs

    monkeypatch.setattr(f"peftrepro.tasks.{name}.{stage}", capture)
    with pytest.raises(StopIteration):
        task.evaluate(None, bos_tokenizer, task.load_split(task.options.eval_split)[:3], PromptWrap(prefix_ids=(9001,)),
                      DecodingConfig(max_new_tokens=8))
    bos = bos_tokenizer.convert_tokens_to_ids(BOS)
    assert seen and all(context[:2] == [9001, bos] and bos not in context[2:] for context in seen)


@pytest.mark.parametrize("max_length, expected_ids", [
    (20, [50, 1, 2, 3, 4, 5, 6, 7, 8]),
    (6, [50, 4, 5, 6, 7, 8]),  # the prompt loses its start, never the BOS
    (3, [50, 6, 7]),  # the BOS counts among the example's own tokens
])
def test_truncation_keeps_the_sequence_start(max_length, expected_ids):
    assert encode_pair([1, 2, 3, 4, 5], [6, 7, 8], NO_PROMPT_WRAP, max_length, start=(50,)).input_ids == expected_ids
    assert wrapped_prompt([1, 2, 3, 4, 5], PromptWrap(prefix_ids=(90,)), 3, start=(50,)) == [90, 50, 4, 5]


# ---- decoding follows task.decoding alone ----------------------------------------------------------

def test_decoding_leaves_out_the_generation_settings_a_model_ships_and_the_record_names_them(tokenizer,
                                                                                            bos_tokenizer):
    model = build_tiny_model(tokenizer, seed=0)
    contexts = [tokenizer("name[Aromi], food[Chinese]")["input_ids"], tokenizer("name[Zizzi]")["input_ids"]]
    decoding = DecodingConfig(batch_size=2, max_new_tokens=6)
    plain = generate(model, tokenizer, contexts, decoding, desc="test")
    model.generation_config.suppress_tokens = [plain[0][0]]  # as a generation_config.json could ship it
    assert generate(model, tokenizer, contexts, decoding, desc="test") == plain
    assert model.generation_config.suppress_tokens == [plain[0][0]]  # the model's own config is put back
    with torch.no_grad():  # transformers alone would apply it: what the suite leaves out matters
        ids = torch.tensor([contexts[0]])
        alone = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=1)
    assert alone[0, -1].item() != plain[0][0]
    described = describe(model, {"name": "tiny", "source": "random"}, bos_tokenizer)
    assert described["generation_config_left_out"] == {"suppress_tokens": [plain[0][0]]}
    assert described["sequence_start"] == [bos_tokenizer.convert_tokens_to_ids(BOS)]
    model.generation_config.suppress_tokens = None
    assert {"generation_config_left_out", "sequence_start"}.isdisjoint(describe(model, {}, tokenizer))
