"""The lean Llama prefill and decoding step: logits equal HF's own KV-cache forward; fallbacks."""

from __future__ import annotations

import pytest
import torch

from entropy_dynamics.models import build_char_tokenizer, build_tiny_model
from entropy_dynamics.train.decode import llama_decoder
from entropy_dynamics.train.rollout import _cache_kwargs, _returned_cache, encode_prompts, sample

PROMPTS = ["1+2=", "123+456-7=", "q="]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def _gqa_llama(tokenizer):
    """A tiny Llama with grouped-query attention (4 query heads share 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, pad_token_id=0)  # fmt: skip
    torch.manual_seed(5)
    return LlamaForCausalLM(config).eval()


def _hf_and_lean_logits(model, tokenizer, prompts, steps):
    """Per-step next-token logits [B, V] from HF's cached forward and from LlamaDecoder."""
    ids, mask = encode_prompts(tokenizer, prompts)
    padded = not bool(mask.all())
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask if padded else None,
                    position_ids=position, use_cache=True)  # fmt: skip
        decoder = llama_decoder(model, position, steps=steps)
        assert decoder is not None
        cache, hf, lean = _returned_cache(out), [out.logits[:, -1].float()], []
        if padded:  # HF's prefill, its cache copied in
            assert decoder.load(cache)
            lean.append(hf[0])
        else:  # the lean causal prefill
            lean.append(decoder.prefill(ids))
        token = out.logits[:, -1].argmax(-1)
        next_position = position[:, -1:] + 1
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            out = model(input_ids=token[:, None], attention_mask=mask if padded else None,
                        position_ids=next_position, use_cache=True, **_cache_kwargs(model, cache))  # fmt: skip
            cache, next_position = _returned_cache(out), next_position + 1
            hf.append(out.logits[:, -1].float())
            lean.append(decoder.step(token, mask if padded else None))
            token = hf[-1].argmax(-1)
    return torch.stack(hf, 1), torch.stack(lean, 1)  # (B, 1 + steps, V)


@pytest.mark.parametrize("prompts", [PROMPTS, ["1+2=", "7-5="]])  # left padding / none
@pytest.mark.parametrize("gqa", [False, True])
def test_lean_logits_equal_hf_decoding_logits(tokenizer, prompts, gqa):
    if gqa:
        model = _gqa_llama(tokenizer)
    else:
        model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=3)
    hf, lean = _hf_and_lean_logits(model.eval(), tokenizer, prompts, steps=6)
    assert hf.abs().max() > 0.1  # the logits are not trivially zero
    # Same arithmetic in the same order: equal to fp32 precision (bit-equal on our CPUs).
    torch.testing.assert_close(lean, hf, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prompts", [PROMPTS, ["1+2=", "7-5="]])
def test_seeded_sample_is_the_same_with_and_without_the_lean_step(tokenizer, prompts):
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=3).eval()
    runs = [
        sample(model, tokenizer, prompts, group_size=4, temperature=0.9, top_p=0.95,
               max_new_tokens=8, generator=torch.Generator().manual_seed(4), fast=fast)
        for fast in (False, True)
    ]  # fmt: skip
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    assert torch.equal(runs[0].response_mask, runs[1].response_mask)
    torch.testing.assert_close(runs[1].sampler_logprobs, runs[0].sampler_logprobs,
                               rtol=1e-6, atol=1e-6)  # fmt: skip


def test_models_it_does_not_cover_fall_back_to_hf(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, mask = encode_prompts(tokenizer, PROMPTS)

    def decoder_for(model):
        return llama_decoder(model, (mask.cumsum(-1) - 1).clamp(min=0), steps=3)

    llama = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=1).eval()
    assert decoder_for(llama) is not None
    assert decoder_for(llama.train()) is None  # dropout would be live
    llama.eval().set_attn_implementation("eager")
    assert decoder_for(llama) is None
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2,
                                      n_positions=64)).eval()  # fmt: skip
    assert decoder_for(gpt2) is None
    rollout = sample(gpt2, tokenizer, PROMPTS, max_new_tokens=3,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert rollout.response_ids.shape == (3, rollout.response_ids.shape[1])
