"""A user's own model: a non-Llama family saved to a local directory, run end to end with model=hub."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from peftrepro.methods import apply_method, make_method_config
from peftrepro.models import load_model
from peftrepro.runs.execute import run_one
from peftrepro.tasks.testing import build_tiny_tokenizer


def _save_tiny_neox(directory: Path) -> Path:
    """A tiny random GPT-NeoX (fused per-head query_key_value) beside its byte-level tokenizer."""
    tokenizer = build_tiny_tokenizer()
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=1024, **special)
    GPTNeoXForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_gpt_neox_from_a_local_directory_trains_and_its_record_names_the_layout(smoke, tmp_path: Path) -> None:
    directory = _save_tiny_neox(tmp_path / "my-neox")
    record = run_one(smoke("task=mnli", "method=lora", "model=hub", f"model.name_or_path={directory}"))
    assert record["status"] == "ok" and record["model"]["model_type"] == "gpt_neox"
    layout = record["model"]["layout"]
    assert layout["family"] == "gpt_neox" and layout["recognised_by"] == "model_type"
    # per head [q | k | v] of 16 rows each: W_q owns rows 0:16, 48:64, ... (not the slice 0:64)
    assert layout["weights"]["W_q"].startswith("attention.query_key_value rows 0:16, 48:64, 96:112, 144:160 of ")
    assert layout["weights"]["W_o"] == "attention.dense"
    assert record["model"]["dtype"] == "float32"
    assert record["params"]["trainable"] == 2 * 2 * 4 * (64 + 64)  # layers × (W_q, W_v) × r × (d_in + d_out)


def test_model_dtype_loads_the_weights_and_makes_the_methods_parameters_in_it(tmp_path: Path) -> None:
    directory = _save_tiny_neox(tmp_path / "my-neox")
    model, tokenizer = load_model({"source": "hub", "name_or_path": str(directory), "dtype": "bf16"})
    apply_method(model, make_method_config("lora", {"weights": ["W_q", "W_v"], "r": 2}))
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    assert model(input_ids=torch.tensor([[5, 6, 7]])).logits.dtype == torch.bfloat16
