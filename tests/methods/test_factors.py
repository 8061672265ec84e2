"""LoRA factors of chosen layers (methods.factors): exported from a saved adapter, per family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from peftrepro.errors import ConfigError, DataError
from peftrepro.methods import apply_method, make_method_config, save_adapter
from peftrepro.methods.factors import (
    FACTORS_FILE,
    check_option,
    export_factors,
    frozen_weight,
    initial_A,
    keeps_factors,
    load_factors,
    resolve_layers,
)
from peftrepro.methods.targets import layout
from tiny_models import FAMILIES

RANKS = {"W_q": 4, "W_v": 2}


def _trained_lora(model: nn.Module, alpha: float = 8.0):
    """LoRA on W_q, W_v with every factor random (B is zero at init, which would hide a swapped A/B)."""
    applied = apply_method(model, make_method_config("lora", {"ranks": RANKS, "alpha": alpha, "dropout": 0.0}))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return applied


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_factors_rebuild_the_update_that_merge_adds(family, tiny_model, tmp_path: Path) -> None:
    """Every layout, fused q/k/v packings included: A and B as saved rebuild exactly the rows LoRA merges."""
    model = tiny_model(family)
    if not {"W_q", "W_v"} <= set(layout(model).weights):
        pytest.skip(f"{family} maps no W_q and W_v")
    applied = _trained_lora(model)
    save_adapter(model, applied.config, tmp_path / "adapter")
    path = export_factors(tmp_path / "adapter", tmp_path / FACTORS_FILE, ["middle", "last"], ["W_q", "W_v"],
                          layout(model).blocks)
    saved = load_factors(path)
    assert (saved.layers, saved.n_layers, saved.blocks) == ([1, 2], 3, layout(model).blocks)
    before = {key: frozen_weight(model, *key).clone() for key in saved.factors}
    applied.merge()
    for (layer, weight), factors in saved.factors.items():
        assert factors.rank == RANKS[weight]
        merged_update = (frozen_weight(model, layer, weight) - before[(layer, weight)]).double()
        # fp16 keeps ~3 significant digits of A and B
        torch.testing.assert_close(factors.delta(), merged_update, rtol=0, atol=2e-3 * merged_update.abs().max().item())


def test_frozen_weight_is_the_paper_matrix_in_d_out_by_d_in(tiny_gpt2, tiny_llama) -> None:
    d = tiny_gpt2.config.n_embd
    c_attn = tiny_gpt2.transformer.h[0].attn.c_attn.weight  # Conv1D: d_in × 3d, columns [q | k | v]
    assert torch.equal(frozen_weight(tiny_gpt2, 0, "W_v"), c_attn[:, 2 * d:].T)
    v_proj = tiny_llama.model.layers[2].self_attn.v_proj.weight  # grouped-query attention: d_kv × d
    assert torch.equal(frozen_weight(tiny_llama, 2, "W_v"), v_proj) and v_proj.shape == (16, 32)


def test_a_drift_measures_how_far_A_moved_from_its_initialisation(tiny_llama, tmp_path: Path) -> None:
    applied = apply_method(tiny_llama, make_method_config("lora", {"ranks": RANKS, "dropout": 0.0}))
    start = initial_A(tiny_llama, [1], ["W_q", "W_v"])
    with torch.no_grad():
        tiny_llama.model.layers[1].self_attn.q_proj.lora_A["W_q"].mul_(1.5)  # moved by half its norm
    save_adapter(tiny_llama, applied.config, tmp_path / "adapter")
    saved = load_factors(export_factors(tmp_path / "adapter", tmp_path / FACTORS_FILE, [1], ["W_q", "W_v"],
                                        "layers", start))
    assert saved.a_drift == pytest.approx({"1.W_q": 0.5, "1.W_v": 0.0}, abs=1e-6)


@pytest.mark.parametrize(("spec", "expected"), [
    (["middle"], [1]), (["first", "last"], [0, 3]), ([-1, "last", 2], [2, 3]), (["middle", 1], [1]),
])
def test_layers_by_name_or_index(spec, expected) -> None:
    assert resolve_layers(spec, 4) == expected  # middle of 4 blocks: block 1, as the paper's 48th of 96 is 47


def test_the_paper_middle_layer() -> None:
    assert resolve_layers(["middle"], 96) == [47] and resolve_layers(["middle"], 30) == [14]


@pytest.mark.parametrize(("option", "message"), [
    ({"layers": ["centre"], "weights": ["W_q"]}, "neither an index nor one of"),
    ({"layers": ["middle"], "weights": ["q_proj"]}, "name paper weights"),
    ({"layers": ["middle"]}, "must be null or"),
    ({"layers": ["middle"], "weights": ["W_q"], "ranks": [0]}, "a list of ranks >= 1"),
    ({"layers": ["middle"], "weights": ["W_q"], "rank": [4]}, "must be null or"),
    ([1, 2], "must be null or"),
])
def test_a_bad_option_is_one_clear_error(option, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_option(option)


@pytest.mark.parametrize(("ranks", "kept"), [
    ({"W_q": 8, "W_v": 8}, True), ({"W_q": 2, "W_v": 2}, False), ({"W_q": 8}, False),
    ({"W_q": 8, "W_k": 8, "W_v": 8, "W_o": 8}, False),
])
def test_only_runs_of_exactly_the_weights_at_a_listed_rank_keep_factors(ranks, kept) -> None:
    option = {"layers": ["middle"], "weights": ["W_q", "W_v"], "ranks": [4, 8, 64]}
    assert keeps_factors(option, ranks) is kept
    assert keeps_factors({**option, "ranks": None}, ranks) is (set(ranks) == {"W_q", "W_v"})
    assert keeps_factors(None, ranks) is False


def test_a_layer_the_model_lacks_is_an_error() -> None:
    with pytest.raises(ConfigError, match="not a layer of a 3-layer model"):
        resolve_layers([5], 3)


def test_no_file_for_another_method_or_unadapted_weights(tiny_llama, tmp_path: Path) -> None:
    applied = apply_method(tiny_llama, make_method_config("lora", {"ranks": {"W_k": 2}}))
    save_adapter(tiny_llama, applied.config, tmp_path / "lora")
    assert export_factors(tmp_path / "lora", tmp_path / FACTORS_FILE, ["last"], ["W_q", "W_v"], "layers") is None
    (tmp_path / "lora" / "method.json").write_text(json.dumps({"method": "adapter_h", "options": {}}))
    assert export_factors(tmp_path / "lora", tmp_path / FACTORS_FILE, ["last"], ["W_k"], "layers") is None
    assert not (tmp_path / FACTORS_FILE).exists()


def test_a_file_that_is_not_factors_is_a_data_error(tiny_llama, tmp_path: Path) -> None:
    applied = apply_method(tiny_llama, make_method_config("lora", {}))
    save_adapter(tiny_llama, applied.config, tmp_path)
    with pytest.raises(DataError, match="is not a peftrepro-lora-factors file"):
        load_factors(tmp_path / "adapter.safetensors")
    with pytest.raises(DataError, match="cannot read LoRA factors"):
        load_factors(tmp_path / "absent.safetensors")
