"""lm.logits_at: the LM head on the chosen rows only gives the full forward's logits on every family."""

from __future__ import annotations

import pytest
import torch

from peftrepro.lm import HEAD_ON_ROWS_FAMILIES, logits_at
from tiny_models import CAUSAL_FAMILIES, build_tiny_model


@pytest.mark.parametrize("family", [*CAUSAL_FAMILIES, "qwen3"])
def test_logits_at_chosen_rows_equal_the_full_forwards(family: str) -> None:
    model = build_tiny_model(family)
    torch.manual_seed(1)
    ids = torch.randint(3, 90, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding, as in training batches
    index = torch.tensor([2, 4, 7 + 1, 7 + 3])
    full = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.flatten(0, 1)[index]
    torch.testing.assert_close(logits_at(model, ids, mask, index), full, atol=1e-5, rtol=1e-5)


def test_every_head_on_rows_family_is_checked_above() -> None:
    checked = {build_tiny_model(name).config.model_type for name in [*CAUSAL_FAMILIES, "qwen3"]}
    assert set(HEAD_ON_ROWS_FAMILIES) <= checked
