"""Correctness guard for the speed work (issue 6): the fast training path computes what the plain
eager loop computes, step for step, and LoRA merges to the same weights.

fast path  = peftrepro.methods + peftrepro.runs.train.train_step (pre-shifted targets, foreach AdamW,
             no host sync; torch.compile when enabled)
reference  = the same model and method under a textbook loop: HF's loss from `labels`, AdamW.
fp32 on CPU, dropout off (compiled and eager dropout draw different masks), constant lr.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from peftrepro.interfaces import IGNORE_INDEX, EncodedExample
from peftrepro.methods import apply_method, make_method_config
from peftrepro.runs import train

STEPS = 4
LR = 1e-2  # large enough that LoRA's B leaves zero and the steps differ
LOSS_TOLERANCE = 1e-5
VOCAB = 128


def tiny_model(family: str) -> torch.nn.Module:
    if family == "llama":
        config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128)
    else:
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=128,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


METHODS = {
    "lora": {"weights": ["W_q", "W_v"], "r": 4, "alpha": 32, "dropout": 0.0},
    "adapter_h": {"r": 8, "init_std": 0.1},
    "prefix_layer": {"prefix_length": 3, "infix_length": 2},
    "prefix_embed": {"prefix_length": 5, "infix_length": 2},  # its prefix runs once per batch
    "ft": {},
}


def encoded_examples(prompt, rng: random.Random, n: int) -> list[EncodedExample]:
    """Variable-length examples wrapped as our tasks wrap them; loss on the target part only."""
    examples = []
    for _ in range(n):
        source = [rng.randrange(VOCAB - 1) for _ in range(rng.randint(3, 9))]
        target = [rng.randrange(VOCAB - 1) for _ in range(rng.randint(2, 6))]
        ids = [*prompt.prefix_ids, *source, *prompt.infix_ids, *target]
        examples.append(EncodedExample(ids, [IGNORE_INDEX] * (len(ids) - len(target)) + target))
    return examples


def batches(prompt, steps: int) -> list[train.Batch]:
    rng = random.Random(0)
    lengths = train.pad_lengths(32, 8)
    return [train.collate(encoded_examples(prompt, rng, 3), 0, 4, lengths) for _ in range(steps)]


def two_copies(family: str, method: str):
    """Two identical models with the method applied identically (same init draws)."""
    copies = []
    for _ in range(2):
        model = tiny_model(family)
        torch.manual_seed(1)
        copies.append((model, apply_method(model, make_method_config(method, METHODS[method]))))
    return copies


def fast_path_losses(model, batches_: list[train.Batch], compile_model: bool) -> list[float]:
    settings = train.TrainSettings(lr=LR, batch_size=4, max_length=32, compile=compile_model, precision="fp32",
                                   progress=False)
    # a schedule this long keeps the lr constant to ~1e-9 over the few steps compared
    state = train.make_train_state(model, settings, num_steps=10**9)
    return [float(train.train_step(state, [batch])) for batch in batches_]


def reference_losses(model, batches_: list[train.Batch]) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR,
                                  weight_decay=0.0, foreach=False)
    model.train()
    losses = []
    for batch in batches_:
        labels = torch.full_like(batch.targets, IGNORE_INDEX)  # HF shifts labels itself
        labels[:, 1:] = batch.targets[:, :-1]
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


CASES = [("llama", "lora"), ("gpt2", "lora"), ("llama", "adapter_h"), ("llama", "prefix_layer"),
         ("llama", "prefix_embed"), ("gpt2", "prefix_embed"), ("gpt2", "ft")]


@pytest.mark.parametrize(("family", "method"), CASES)
def test_fast_path_matches_eager_reference(family: str, method: str) -> None:
    (fast, applied), (ref, _) = two_copies(family, method)
    data = batches(applied.prompt, STEPS)
    fast_losses = fast_path_losses(fast, data, compile_model=False)
    ref_losses = reference_losses(ref, data)
    assert fast_losses == pytest.approx(ref_losses, abs=LOSS_TOLERANCE)
    assert len(set(round(loss, 4) for loss in fast_losses)) == STEPS  # training really moved the weights
    for (name, a), b in zip(fast.state_dict().items(), ref.state_dict().values()):
        a, b = without_key_bias(fast, name, a), without_key_bias(ref, name, b)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{method}: {name} diverged")


def without_key_bias(model, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """GPT-2's fused c_attn bias minus its key third. The key bias has a gradient that is zero in
    exact arithmetic (softmax over keys ignores a constant added to every score of a query), so
    its float gradient is rounding noise that depends on the order of operations, and Adam, which
    divides by the gradient's own scale, turns that noise into steps of size ~lr. Any two
    mathematically equal implementations (here: the LM head on target rows vs on all rows) move
    it differently; every other entry must still agree to 1e-5."""
    if not name.endswith("attn.c_attn.bias"):
        return tensor
    d = model.config.n_embd
    return torch.cat([tensor[:d], tensor[2 * d:]])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_merges_to_the_same_weights_after_training(family: str) -> None:
    (fast, fast_applied), (ref, ref_applied) = two_copies(family, "lora")
    data = batches(fast_applied.prompt, STEPS)
    fast_path_losses(fast, data, compile_model=False)
    reference_losses(ref, data)
    probe = data[0].input_ids
    fast.eval()
    with torch.no_grad():
        before = fast(input_ids=probe).logits
    merged_fast = fast_applied.merge_and_unload()
    merged_ref = ref_applied.merge_and_unload()
    for (name, a), b in zip(merged_fast.state_dict().items(), merged_ref.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"merged {name} differs")
    assert not any(n for n, _ in merged_fast.named_parameters() if "lora" in n)
    with torch.no_grad():
        torch.testing.assert_close(merged_fast(input_ids=probe).logits, before, atol=1e-4, rtol=1e-4)


def test_our_lora_step_equals_hf_peft_step() -> None:
    """The benchmark compares like with like: with our A, B copied into peft, both train alike."""
    peft = pytest.importorskip("peft")
    base = tiny_model("llama")
    ours = copy.deepcopy(base)
    torch.manual_seed(1)
    applied = apply_method(ours, make_method_config("lora", METHODS["lora"]))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=4, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for index, wrapper in enumerate(applied.mergeable):
            projection = "q_proj" if wrapper.slices[0].weight == "W_q" else "v_proj"
            target = theirs.base_model.model.model.layers[index // 2].self_attn.get_submodule(projection)
            target.lora_A["default"].weight.copy_(wrapper.lora_A[wrapper.slices[0].weight])
            target.lora_B["default"].weight.normal_()  # nonzero B: the update path is exercised at step 1
            wrapper.lora_B[wrapper.slices[0].weight].copy_(target.lora_B["default"].weight)
    data = batches(applied.prompt, STEPS)
    assert fast_path_losses(ours, data, compile_model=False) == pytest.approx(
        reference_losses(theirs, data), abs=LOSS_TOLERANCE)


@pytest.mark.slow  # inductor on CPU compiles for one to two minutes
def test_compiled_fast_path_matches_eager() -> None:
    (compiled, applied), (eager, _) = two_copies("llama", "lora")
    data = batches(applied.prompt, STEPS)
    assert fast_path_losses(compiled, data, compile_model=True) == pytest.approx(
        fast_path_losses(eager, data, compile_model=False), abs=LOSS_TOLERANCE)
