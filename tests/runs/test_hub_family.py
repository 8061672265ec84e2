"""A user's own model: a non-Llama family saved to a local directory, run end to end with model=hub."""

from __future__ import annotations

from pathlib import Path

import pytest
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


@pytest.mark.parametrize("method, options, trained_in", [
    ("lora", {"weights": ["W_q", "W_v"], "r": 2}, torch.float32),  # what a method adds: fp32, as peft keeps it
    ("adapter_h", {"r": 4}, torch.float32),
    ("prefix_embed", {}, torch.float32),
    ("prefix_layer", {}, torch.float32),
    ("bitfit", {}, torch.bfloat16),  # the base's own weights train as loaded
])
def test_model_dtype_loads_the_weights_and_the_methods_add_fp32_parameters(tmp_path: Path, method, options,
                                                                            trained_in) -> None:
    directory = _save_tiny_neox(tmp_path / "my-neox")
    model, tokenizer = load_model({"source": "hub", "name_or_path": str(directory), "dtype": "bf16"})
    applied = apply_method(model, make_method_config(method, options))
    trainable = {parameter.dtype for parameter in model.parameters() if parameter.requires_grad}
    frozen = {parameter.dtype for parameter in model.parameters() if not parameter.requires_grad}
    assert trainable == {trained_in} and frozen == {torch.bfloat16}
    ids = torch.tensor([[*applied.prompt.prefix_ids, 5, 6, 7, *applied.prompt.infix_ids]])
    logits = model(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == p.dtype for p in model.parameters() if p.requires_grad)


