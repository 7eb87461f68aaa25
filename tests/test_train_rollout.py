"""The KV-cache sampler: its log-probs equal a full forward's, padding invariance, top-p, EOS."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_dynamics.models import build_char_tokenizer, build_tiny_model
from entropy_dynamics.token_stats import token_stats
from entropy_dynamics.train.rollout import (
    _top_p_filter,
    response_hidden,
    response_logits,
    sample,
    shared_prompt_hidden,
)


@pytest.fixture(scope="module")
def policy():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=3)
    return model.eval(), tokenizer


@pytest.mark.parametrize(
    "prompts",
    [["1+2=", "123+456-7=", "q="], ["1+2=", "7-5="]],  # left padding in play / no padding at all
)
def test_sampler_logprobs_equal_teacher_forced_logprobs(policy, prompts):
    model, tokenizer = policy
    rollout = sample(model, tokenizer, prompts, group_size=3, temperature=0.7, max_new_tokens=6,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    T = rollout.response_ids.shape[1]
    logits = response_logits(model, rollout.input_ids, rollout.attention_mask, T)
    stats = token_stats(logits, rollout.response_ids, temperature=0.7, mask=rollout.response_mask)
    mask = rollout.response_mask
    assert mask.sum() > 0
    torch.testing.assert_close(rollout.sampler_logprobs[mask], stats.logprobs[mask],
                               atol=2e-5, rtol=0)  # fmt: skip
    assert torch.all(rollout.sampler_logprobs[~mask] == 0)


def test_greedy_response_does_not_depend_on_batch_padding(policy):
    model, tokenizer = policy
    alone = sample(model, tokenizer, ["7-3="], temperature=0.0, max_new_tokens=5)
    batched = sample(model, tokenizer, ["7-3=", "99+88-77+66="], temperature=0.0, max_new_tokens=5)
    T = alone.response_ids.shape[1]
    assert torch.equal(batched.response_ids[0, :T][alone.response_mask[0]],
                       alone.response_ids[0][alone.response_mask[0]])  # fmt: skip
    assert batched.texts[0] == alone.texts[0]


def test_rows_are_prompt_major(policy):
    model, tokenizer = policy
    rollout = sample(model, tokenizer, ["1=", "22="], group_size=3, max_new_tokens=2,
                     generator=torch.Generator().manual_seed(1))  # fmt: skip
    prompt_part = rollout.input_ids[:, : rollout.prompt_len]
    assert torch.equal(prompt_part[0], prompt_part[2]) and torch.equal(
        prompt_part[3], prompt_part[5]
    )
    assert not torch.equal(prompt_part[0], prompt_part[3])


def test_top_p_filter_hand_computed():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    # sorted 0.5, 0.3, 0.2; mass before each: 0, 0.5, 0.8. top_p = 0.6 keeps 0.5 and 0.3.
    kept = torch.isfinite(_top_p_filter(logits, 0.6))
    assert kept.tolist() == [[False, True, True]]
    # top_p = 0.5: the mass before 0.3 is already 0.5 >= 0.5, so only the top token stays.
    assert torch.isfinite(_top_p_filter(logits, 0.5)).tolist() == [[False, True, False]]
    assert torch.equal(_top_p_filter(logits, 1.0), logits)


def test_first_token_frequencies_follow_softmax_at_temperature(policy):
    model, tokenizer = policy
    n, temperature = 4000, 1.5
    rollout = sample(model, tokenizer, ["5+5="], group_size=n, temperature=temperature,
                     max_new_tokens=1, generator=torch.Generator().manual_seed(2))  # fmt: skip
    logits = response_logits(model, rollout.input_ids[:1], rollout.attention_mask[:1], 1)[0, 0]
    probs = (logits / temperature).softmax(-1).double()
    counts = torch.bincount(rollout.response_ids[:, 0], minlength=probs.numel()).double()
    sigma = (n * probs * (1 - probs)).sqrt()
    assert torch.all((counts - n * probs).abs() <= 5 * sigma + 1)
    assert math.isclose(float(counts.sum()), n)


def test_eos_ends_the_response_mask(policy):
    model, tokenizer = policy
    eos = tokenizer.eos_token_id
    rollout = sample(model, tokenizer, ["1+1="] * 2, group_size=64, max_new_tokens=12,
                     generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert (rollout.response_ids == eos).any()  # the case under test occurs (fixed seed)
    for ids, mask in zip(rollout.response_ids, rollout.response_mask, strict=True):
        hits = (ids == eos).nonzero()
        if len(hits):
            first = int(hits[0])
            assert mask[: first + 1].all() and not mask[first + 1 :].any()
            assert (ids[first + 1 :] == tokenizer.pad_token_id).all()
        else:
            assert mask.all()


@pytest.mark.parametrize(
    "prompts",
    [["1+2=", "123+456-7=", "q="], ["1+2=", "7-5="]],  # left padding in play / no padding at all
)
@pytest.mark.parametrize("response_len", [1, 5])
def test_shared_prompt_pass_equals_the_full_pass_values_and_gradients(prompts, response_len):
    """One prompt pass per group (KV cache repeated G times) == B full passes, in float64:
    values to float64 rounding, gradients to float32's (the model's norms run in float32)."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=3)
    model = model.double().eval()
    G = 3
    rollout = sample(model, tokenizer, prompts, group_size=G, max_new_tokens=response_len,
                     generator=torch.Generator().manual_seed(1))  # fmt: skip
    ids, attention = rollout.input_ids, rollout.attention_mask
    T = rollout.response_ids.shape[1]
    weights = torch.randn(ids.shape[0], T, model.config.vocab_size, generator=torch.Generator()
                          .manual_seed(2), dtype=torch.float64)  # fmt: skip
    results = {}
    for name, group_size in (("full", 1), ("shared", G)):
        model.zero_grad(set_to_none=True)
        hidden = response_hidden(model, ids, attention, T, group_size=group_size)  # (B, T, D)
        logits = response_logits(model, ids, attention, T, group_size=group_size)  # (B, T, V)
        (logits * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[name] = (hidden.detach(), logits.detach(), grads)
    (h_full, z_full, g_full), (h_shared, z_shared, g_shared) = results["full"], results["shared"]
    assert h_shared.shape == (ids.shape[0], T, 32)
    torch.testing.assert_close(h_shared, h_full, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(z_shared, z_full, atol=1e-12, rtol=1e-10)
    assert g_shared.keys() == g_full.keys() and len(g_full) > 0
    for name in g_full:  # LlamaRMSNorm computes in float32 even in a float64 model, so the
        # backward's reductions round at float32 in an order that depends on the shapes
        error = (g_shared[name] - g_full[name]).norm() / g_full[name].norm()
        assert error < 1e-6, (name, float(error))


def test_shared_prompt_pass_refuses_rows_not_grouped_by_prompt(policy):
    model, tokenizer = policy
    rollout = sample(model, tokenizer, ["1+2=", "7-5="], group_size=2, max_new_tokens=3,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    ids = rollout.input_ids[[0, 2, 1, 3]]  # prompt-minor: rows 0 and 1 now differ
    with pytest.raises(ValueError, match="not grouped by prompt"):
        shared_prompt_hidden(model, ids, rollout.attention_mask, 3, 2)
    with pytest.raises(ValueError, match="divisible"):
        shared_prompt_hidden(model, rollout.input_ids[:3], rollout.attention_mask[:3], 3, 2)


def test_draw_follows_the_probabilities_and_skips_zero_probability_tokens():
    from entropy_dynamics.train.rollout import _draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.25, 0.25, 0.0]]).repeat(40_000, 1)  # (B, V)
    tokens = _draw(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=6).double() / tokens.numel()
    assert counts[[0, 2, 5]].sum() == 0  # never a token top-p cut (probability 0)
    torch.testing.assert_close(counts, probs[0].double(), atol=0.01, rtol=0)  # 4 sigma ~ 0.01
    again = _draw(probs, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)  # seeded
    one_hot = torch.zeros(3, 5).index_fill_(1, torch.tensor([4]), 1.0)
    assert _draw(one_hot, torch.Generator().manual_seed(1)).tolist() == [4, 4, 4]
