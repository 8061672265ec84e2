"""A tiny tokenizer and tiny random causal LMs, built offline in a second, for tests.

The tokenizer is a byte-level BPE (GPT-2's scheme: any UTF-8 text round-trips) trained with
`tokenizers` on the fixture datasets, with GPT-2's `<|endoftext|>` as BOS/EOS/PAD. The models are
GPT-2 or Llama configs with a few small layers, so every method's module mapping is exercised.
"""

from __future__ import annotations

import functools
import tempfile
from typing import Any, Iterator

import torch

EOS = "<|endoftext|>"


def _fixture_corpus() -> Iterator[str]:
    from peftrepro.tasks import make_task
    from peftrepro.tasks.fixtures import write_fixtures

    with tempfile.TemporaryDirectory() as tmp:
        root = write_fixtures(tmp)
        for row in make_task("e2e", root).load_split("train"):
            yield f"{row['mr']} {row['ref']}"
        wikisql = make_task("wikisql", root)
        for example in wikisql.load_split("train") + wikisql.load_split("validation"):
            yield wikisql.prompt_text(example) + wikisql.target_text(example)
        mnli = make_task("mnli", root)
        for example in mnli.load_split("train"):
            yield mnli.prompt_text(example) + " True Neither False"


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(_fixture_corpus()), trainer=trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A fresh `PreTrainedTokenizerFast` (byte-level BPE, `<|endoftext|>` = BOS = EOS = PAD)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_trained_tokenizer_json(vocab_size))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOS, eos_token=EOS, pad_token=EOS)


def build_tiny_model(tokenizer: Any, architecture: str = "gpt2", seed: int = 0, hidden: int = 64,
                     layers: int = 2, heads: int = 4) -> torch.nn.Module:
    """A randomly initialised causal LM (`gpt2` or `llama`) sized for `tokenizer`."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if architecture == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=hidden, n_layer=layers,
                            n_head=heads, **ids)
    elif architecture == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                             max_position_embeddings=512, **ids)
    else:
        raise ValueError(f"unknown tiny architecture {architecture!r}; valid: gpt2, llama")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)
