"""Causal-LM logits at chosen positions only.

Training and label scoring need the vocabulary projection at a few positions of each sequence
(the target tokens). Projecting every position of a small LM onto a ~50k vocabulary dominates its
step time and memory (SmolLM2-135M: the head is about a fifth of its parameters and matmul work per token), so for families whose
logits are exactly `lm_head(last_hidden_state)` (no soft-capping or logit scaling) we gather the
backbone's last hidden states first and project those rows alone. Other families take the full
logits and gather them: the same numbers, only slower.
"""

from __future__ import annotations

import torch

from peftrepro.methods.prefix import (
    index_after_prefix,
    rows_after_prefix,
    shared_prefix,
)

# Families whose LM head is a plain projection of the backbone's last hidden state (no soft-capping,
# logit scaling or multiplier), each checked against the full forward in tests/test_lm.py.
HEAD_ON_ROWS_FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "phi", "phi3", "opt", "gptj",
                         "gpt_neox", "bloom", "falcon", "gpt_bigcode")


def logits_at(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              flat_index: torch.Tensor) -> torch.Tensor:
    """Logits (len(flat_index) x vocab) at the flat positions `flat_index` of (batch x length)."""
    if getattr(model.config, "model_type", None) in HEAD_ON_ROWS_FAMILIES:
        prefix_ids = shared_prefix(model, input_ids)
        if prefix_ids is None:
            hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                      use_cache=False).last_hidden_state
        else:  # a prefix method's l_p positions run once for the whole batch (methods.prefix)
            hidden = rows_after_prefix(model, prefix_ids, input_ids, attention_mask)
            flat_index = index_after_prefix(flat_index, input_ids.shape[1], len(prefix_ids))
        return model.get_output_embeddings()(hidden.flatten(0, 1).index_select(0, flat_index))
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return logits.flatten(0, 1).index_select(0, flat_index)
