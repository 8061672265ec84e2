"""PreEmbed / PreLayer through virtual tokens, tested by decoding (generate + KV cache), not only the loss."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from peftrepro.lm import logits_at
from peftrepro.methods import apply_method, make_method_config
from peftrepro.methods.prefix import VirtualTokenEmbedding, shared_prefix

PREFIX_METHODS = ["prefix_embed", "prefix_layer"]
TARGET = [11, 42, 7, 5]


def _apply(model, method, l_p=3, l_i=2):
    return apply_method(model, make_method_config(method, {"prefix_length": l_p, "infix_length": l_i}))


def _prompt_ids(applied, prompt=(20, 21, 22)):
    wrap = applied.prompt
    return torch.tensor([[*wrap.prefix_ids, *prompt, *wrap.infix_ids]])


def _greedy(model, ids, use_cache, n=len(TARGET), attention_mask=None):
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids) if attention_mask is None
                         else attention_mask, max_new_tokens=n, do_sample=False, use_cache=use_cache,
                         pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def _steerable_gpt2():
    """A tiny GPT-2 whose logits can become confident (at the usual init std 0.02, a 32-wide model's
    tied LM head keeps every logit near 0, so no input could make it emit a target)."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(config).eval()


def _memorise(model, applied, steps=60):
    """Train only the method's parameters so the prompt is followed by TARGET."""
    ids = torch.cat([_prompt_ids(applied), torch.tensor([TARGET])], dim=1)
    labels = ids.clone()
    labels[:, :-len(TARGET)] = -100
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def test_prompt_ids_are_past_the_vocabulary(tiny_gpt2):
    applied = _apply(tiny_gpt2, "prefix_layer", l_p=3, l_i=2)
    vocab = tiny_gpt2.config.vocab_size
    assert applied.prompt.prefix_ids == (vocab, vocab + 1, vocab + 2)
    assert applied.prompt.infix_ids == (vocab + 3, vocab + 4)


@pytest.mark.parametrize("method", PREFIX_METHODS)
def test_virtual_ids_never_reach_the_real_embedding(method, tiny_gpt2):
    applied = _apply(tiny_gpt2, method)
    wrapper = tiny_gpt2.transformer.wte
    assert isinstance(wrapper, VirtualTokenEmbedding)
    seen = []
    wrapper.base.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    tiny_gpt2(input_ids=_prompt_ids(applied))
    assert int(seen[0].max()) < tiny_gpt2.config.vocab_size


@pytest.mark.parametrize("method", PREFIX_METHODS)
def test_memorised_prefix_decodes_target_with_and_without_cache(method):
    model = _steerable_gpt2()
    applied = _apply(model, method)
    before = _greedy(model, _prompt_ids(applied), use_cache=True)[0]
    _memorise(model, applied)
    with_cache = _greedy(model, _prompt_ids(applied), use_cache=True)[0]
    without_cache = _greedy(model, _prompt_ids(applied), use_cache=False)[0]
    assert with_cache == without_cache == TARGET != before


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", PREFIX_METHODS)
def test_cache_and_no_cache_agree_on_left_padded_batches(method, family, tiny_model):
    model = tiny_model(family)
    applied = _apply(model, method)
    with torch.no_grad():  # move off the real-token init so the virtual tokens matter
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter))
    long, short = _prompt_ids(applied, (20, 21, 22, 23)), _prompt_ids(applied, (30, 31))
    pad = long.shape[1] - short.shape[1]
    ids = torch.cat([long, torch.cat([torch.zeros(1, pad, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    cached = _greedy(model, ids, use_cache=True, n=5, attention_mask=mask)
    assert cached == _greedy(model, ids, use_cache=False, n=5, attention_mask=mask)
    assert cached[1] == _greedy(model, short, use_cache=True, n=5)[0]  # padding changes nothing


def test_prefix_layer_replaces_hidden_states_at_every_layer(tiny_gpt2):
    applied = _apply(tiny_gpt2, "prefix_layer", l_p=2, l_i=0)
    captured = []
    for block in tiny_gpt2.transformer.h:
        block.register_forward_pre_hook(lambda m, args, kwargs: captured.append(args[0].clone()), with_kwargs=True)
    tiny_gpt2(input_ids=_prompt_ids(applied))
    trained = tiny_gpt2.transformer.prefix_layer_activations.activations
    for layer in range(1, len(tiny_gpt2.transformer.h)):  # hooks run in order: ours first, then the probe
        torch.testing.assert_close(captured[layer][0, :2], trained[layer - 1])


@pytest.mark.parametrize("method,input_reaches_the_label_without_the_last_attention", [
    ("prefix_layer", False), ("prefix_embed", True)])
def test_with_an_infix_prefix_layer_sees_the_input_only_through_the_last_attention(
        method, input_reaches_the_label_without_the_last_attention):
    """The property Table 4's PreLayer note states: the logits at the last infix position (where the
    first target token is predicted) depend on the prompt only through the last block's attention."""
    model = _steerable_gpt2()
    applied = _apply(model, method, l_p=2, l_i=2)
    with torch.no_grad():
        model.transformer.h[-1].attn.c_proj.weight.zero_()  # cut the last block's attention output
        model.transformer.h[-1].attn.c_proj.bias.zero_()
        logits = [model(input_ids=_prompt_ids(applied, prompt)).logits[0, -1] for prompt in ((20, 21, 22), (50, 9, 3))]
    assert (not torch.allclose(*logits)) == input_reaches_the_label_without_the_last_attention


def test_ids_beyond_the_virtual_range_are_an_error(tiny_gpt2):
    _apply(tiny_gpt2, "prefix_embed", l_p=1, l_i=0)
    # an asynchronous device-side assert (no host sync per forward): RuntimeError on CPU
    with pytest.raises(RuntimeError, match="beyond this method's virtual ids"):
        tiny_gpt2(input_ids=torch.tensor([[tiny_gpt2.config.vocab_size + 5]]))


# ---- shared prefix: the l_p prefix positions run once per right-padded batch (lm.logits_at)


def _right_padded(applied, prompts=((20, 21, 22, 23, 24), (30, 31)), dummy_row=True):
    """Rows as the collator builds them: prefix + prompt + infix, right-padded, plus a dummy row
    (padding with one attended token) that carries nothing."""
    rows = [_prompt_ids(applied, prompt)[0].tolist() for prompt in prompts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows) + dummy_row, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, :len(row)], mask[index, :len(row)] = torch.tensor(row), 1
    mask[len(rows):, 0] = 1
    return ids, mask


def _after_prefix_positions(ids, mask, l_p):
    """Flat indices of every attended position past the prefix in the real rows."""
    keep = mask.bool() & (torch.arange(ids.shape[1]) >= l_p)
    keep[mask.sum(dim=1) <= 1] = False  # the dummy row
    return keep.flatten().nonzero().squeeze(1)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", PREFIX_METHODS)
def test_shared_prefix_gives_the_plain_logits_and_gradients(method, family, tiny_model):
    model = tiny_model(family)
    applied = _apply(model, method, l_p=4)
    ids, mask = _right_padded(applied)
    index = _after_prefix_positions(ids, mask, l_p=4)
    model.eval()  # the tiny GPT-2 has dropout; gradients flow all the same (training: test_fast_path_parity)
    assert shared_prefix(model, ids) is not None  # the path under test is really taken

    def logits_and_grads(logits_fn):
        logits = logits_fn()
        (logits.float() ** 2).sum().backward()
        grads = [parameter.grad.clone() for parameter in model.parameters() if parameter.requires_grad]
        model.zero_grad()
        return logits.detach(), grads

    shared, shared_grads = logits_and_grads(lambda: logits_at(model, ids, mask, index))
    plain, plain_grads = logits_and_grads(
        lambda: model(input_ids=ids, attention_mask=mask).logits.flatten(0, 1).index_select(0, index))
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    for ours, reference in zip(shared_grads, plain_grads, strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_shared_prefix_is_not_taken_under_dropout_nor_for_short_inputs():
    config = GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, attn_pdrop=0.1)
    model = GPT2LMHeadModel(config)
    applied = _apply(model, "prefix_embed", l_p=4)
    ids, _ = _right_padded(applied)
    model.train()
    assert shared_prefix(model, ids) is None  # each row would otherwise share the prefix's dropout mask
    model.eval()
    assert shared_prefix(model, ids) is not None
    assert shared_prefix(model, ids[:, :4]) is None  # nothing after the prefix


def test_a_row_without_the_prefix_is_an_error(tiny_llama):
    applied = _apply(tiny_llama, "prefix_embed", l_p=4)
    ids, mask = _right_padded(applied, dummy_row=False)
    ids[1] = ids[1].roll(2)  # left padding would move the prefix like this
    with pytest.raises(RuntimeError, match="does not start with the method's prefix ids"):
        logits_at(tiny_llama, ids, mask, _after_prefix_positions(ids, mask, l_p=4))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prompt_tuning_is_preembed_with_a_prefix_only(family, tiny_model):
    """Lester et al.'s soft prompt: l_p virtual tokens before the input, no infix, d·l_p parameters; the
    same machinery and numbers as PreEmbed with l_i = 0."""
    models = []
    for method, options in (("prompt_tuning", {"prefix_length": 4}), ("prefix_embed", {"prefix_length": 4,
                                                                                         "infix_length": 0})):
        torch.manual_seed(3)
        model = tiny_model(family)
        applied = apply_method(model, make_method_config(method, options))
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert [tuple(p.shape) for p in trainable] == [(4, model.config.hidden_size)]
        assert len(applied.prompt.prefix_ids) == 4 and applied.prompt.infix_ids == ()
        models.append((model, applied))
    (prompt, prompt_applied), (embed, _) = models
    ids = _prompt_ids(prompt_applied)
    torch.testing.assert_close(prompt(input_ids=ids).logits, embed(input_ids=ids).logits, rtol=0, atol=0)
