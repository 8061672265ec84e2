"""A tiny training problem for the loop's tests: a random 2-layer Llama and hand-made, learnable examples."""

from __future__ import annotations

from peftrepro.interfaces import IGNORE_INDEX, EncodedExample
from peftrepro.runs.train import TrainSettings

TINY_LLAMA = {"name": "tiny-llama", "source": "random", "architecture": "llama", "init_seed": 0,
              "config": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}}


def examples(count: int = 16, length: int = 12) -> list[EncodedExample]:
    """Prompt of 4 tokens, then a target that repeats a per-example pattern (learnable)."""
    rows = []
    for index in range(count):
        ids = [10 + index % 4] * 4 + [20 + (index + j) % 5 for j in range(length - 4)]
        rows.append(EncodedExample(ids, [IGNORE_INDEX] * 4 + ids[4:]))
    return rows


def settings(**changes) -> TrainSettings:
    base = dict(lr=1e-2, batch_size=4, epochs=3, max_length=32, pad_multiple=16, progress=False, log_every=1)
    return TrainSettings(**(base | changes))
