"""Rollouts: sample G responses per prompt with a KV cache, and the teacher-forced policy forward.

Our own sampling loop (not `model.generate`), faster on small models (docs/training.md has the
timings) with the lean Llama path of `train/decode.py` (one prefill per prompt, shared by its G
samples), and it returns the sampled tokens' log-probs without a second pass. Prompts are
left-padded so that every response
starts at the same column; responses are right-padded after EOS. When no prompt is padded the
attention mask is left out (same result, less overhead per token).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_dynamics.train.decode import llama_decoder


@functools.cache
def _cache_argument(model_class: type) -> str:
    """``cache`` where the class's forward takes it (transformers 5.24 here, where
    ``past_key_values`` is deprecated and goes in 5.40), else ``past_key_values``; once per
    class, not once per decoding step."""
    forward = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in forward else "past_key_values"


def _cache_kwargs(model, cache) -> dict:
    """The KV-cache keyword argument of ``model``'s forward, holding ``cache``."""
    return {_cache_argument(type(model)): cache}


def _returned_cache(out):
    """The KV cache a forward with ``use_cache=True`` returned (``cache`` or ``past_key_values``)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


@dataclass
class Rollout:
    """A batch of sampled responses, rows grouped by prompt (rows g*G .. g*G+G-1 share a prompt).

    input_ids: [B, P + T] left-padded prompt followed by the response.
    attention_mask: [B, P + T] 1 for real prompt tokens and every response column.
    response_ids: [B, T] sampled tokens (pad after EOS).
    response_mask: bool [B, T] True for generated tokens up to and including EOS.
    sampler_logprobs: [B, T] log-prob of each sampled token under softmax(z / temperature) as
        seen by the sampler (KV-cache numerics; 0 at masked positions).
    texts: B decoded responses (EOS and padding removed).
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    sampler_logprobs: Tensor
    texts: list[str]

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.response_ids.shape[1]


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


CHAT_TEMPLATE_CHOICES = ("auto", True, False)


def use_chat_template(tokenizer, setting: str | bool = "auto") -> bool:
    """Whether prompts go through the tokenizer's chat template (`rollout.chat_template`).

    "auto": when the tokenizer defines one (an instruct model such as SmolLM2 answers a raw
    prompt with nothing; the char tokenizer has none). True requires one; False never uses it.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if setting == "auto":
        return has_template
    if setting is True and not has_template:
        raise ValueError(
            "rollout.chat_template=true but the tokenizer defines no chat template; valid for "
            "this tokenizer: auto, false"
        )
    if setting not in (True, False):
        raise ValueError(f"chat_template={setting!r}; valid: 'auto', True, False")
    return setting


def prompt_token_ids(tokenizer, prompt: str, *, chat_template: bool = False) -> list[int]:
    """Token ids of one prompt: the raw text (with BOS where the tokenizer adds one) or, with
    `chat_template`, one user turn followed by the assistant header (add_generation_prompt)."""
    if not chat_template:
        return list(tokenizer(prompt)["input_ids"])
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # BatchEncoding or list


def encode_prompts(
    tokenizer, prompts: list[str], *, chat_template: bool = False, device="cpu"
) -> tuple[Tensor, Tensor]:
    """Left-pad the tokenised prompts: (input_ids [B, P], attention_mask [B, P])."""
    rows = [prompt_token_ids(tokenizer, p, chat_template=chat_template) for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("prompts: every prompt must tokenise to at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), _pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def _top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Set logits outside the smallest set with cumulative probability >= top_p to -inf. [B, V]."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token crossing top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _draw(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row of `probs` [B, V] by inverse CDF: [B].

    One uniform per row against the float64 cumulative sum, instead of `torch.multinomial`'s V
    exponential draws per row (the largest cost of a decoding step at V = 49 152 after the
    matmuls). `right=True` never lands on a zero-probability token (top-p's cut).
    """
    cdf = probs.double().cumsum(-1)  # (B, V)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)
    token = torch.searchsorted(cdf, u.double() * cdf[:, -1:], right=True)  # (B, 1)
    return token.clamp(max=probs.shape[-1] - 1).squeeze(-1)


def _lean_prefill(model, decoder, ids: Tensor, mask: Tensor, position_ids: Tensor, group_size: int):
    """Fill `decoder` with each prompt once, then share it by the G samples: logits [B, V] or None.

    ids, mask, position_ids: [N, P], one row per prompt. Unpadded prompts go through the lean
    causal prefill; padded ones through HF's (which builds the padding mask), its cache copied in.
    None when that cache has a layout the decoder does not know.
    """
    if bool(mask.all()):
        next_logits = decoder.prefill(ids)  # (N, V)
    else:
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True,
                    logits_to_keep=1)  # fmt: skip
        if not decoder.load(_returned_cache(out)):
            return None
        next_logits = out.logits[:, -1].float()
    decoder.repeat_rows(group_size)
    return next_logits.repeat_interleave(group_size, 0)  # (B, V)


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    *,
    group_size: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 16,
    generator: torch.Generator | None = None,
    fast: bool = True,
    chat_template: bool = False,
) -> Rollout:
    """Sample `group_size` responses for each prompt (temperature 0 = greedy).

    Rows are ordered prompt-major: row g*G + j is sample j of prompt g. Sampling stops at EOS or
    after max_new_tokens; log-probs are taken under softmax(z / temperature) before top-p.
    With `fast` (default) a Llama decodes through `decode.LlamaDecoder` (same logits as the
    model's own forward, a fraction of its Python overhead); False always calls the model.
    `chat_template`: wrap each prompt as a user turn (see `use_chat_template`).
    """
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError(f"group_size={group_size}, max_new_tokens={max_new_tokens}: need >= 1")
    device = next(model.parameters()).device
    ids, mask = encode_prompts(tokenizer, prompts, chat_template=chat_template,
                               device=device)  # fmt: skip  # (N, P), one row per prompt
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = not bool(mask.all())  # no padding: no mask to build (faster, same result)
    prompt_ids, prompt_mask, prompt_positions = (
        x.repeat_interleave(group_size, 0) for x in (ids, mask, position_ids)
    )  # (B, P)
    B = prompt_ids.shape[0]
    eos, pad = tokenizer.eos_token_id, _pad_id(tokenizer)
    decoder = llama_decoder(model, position_ids, steps=max_new_tokens - 1) if fast else None
    if decoder is not None:
        next_logits = _lean_prefill(model, decoder, ids, mask, position_ids, group_size)
        decoder = decoder if next_logits is not None else None
    if decoder is None:
        out = model(
            input_ids=prompt_ids, attention_mask=prompt_mask if padded else None,
            position_ids=prompt_positions, use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        cache, next_logits = _returned_cache(out), out.logits[:, -1].float()  # (B, V)
    next_position = prompt_positions[:, -1:] + 1
    attention = prompt_mask
    tokens, logprobs, alive_cols = [], [], []
    alive = torch.ones(B, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        if temperature == 0:
            logp = next_logits.log_softmax(-1)
            token = next_logits.argmax(-1)
        else:
            scaled = next_logits / temperature
            logp = scaled.log_softmax(-1)
            probs = _top_p_filter(scaled, top_p).softmax(-1)
            token = _draw(probs, generator)
        token = torch.where(alive, token, torch.full_like(token, pad))
        tokens.append(token)
        logprobs.append(torch.where(alive, logp.gather(-1, token[:, None])[:, 0], 0.0))
        alive_cols.append(alive.clone())
        alive = alive & (token != eos)
        if not alive.any() or t == max_new_tokens - 1:
            break
        if padded:
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        if decoder is not None:
            next_logits = decoder.step(token, attention if padded else None)
            continue
        out = model(
            input_ids=token[:, None],
            attention_mask=attention if padded else None,
            position_ids=next_position,
            use_cache=True,
            **_cache_kwargs(model, cache),
        )
        cache, next_logits = _returned_cache(out), out.logits[:, -1].float()
        next_position = next_position + 1

    response_ids = torch.stack(tokens, 1)  # (B, T)
    response_mask = torch.stack(alive_cols, 1)
    texts = decode_responses(tokenizer, response_ids, response_mask)
    return Rollout(
        input_ids=torch.cat([prompt_ids, response_ids], 1),
        attention_mask=torch.cat([prompt_mask, torch.ones_like(response_ids)], 1),
        response_ids=response_ids,
        response_mask=response_mask,
        sampler_logprobs=torch.stack(logprobs, 1),
        texts=texts,
    )


def decode_responses(tokenizer, response_ids: Tensor, response_mask: Tensor) -> list[str]:
    """Decode each row's masked tokens, dropping EOS."""
    eos = tokenizer.eos_token_id
    texts = []
    for ids, keep in zip(response_ids.tolist(), response_mask.tolist(), strict=True):
        kept = [i for i, k in zip(ids, keep, strict=True) if k and i != eos]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    return texts


def response_logits(
    model, input_ids: Tensor, attention_mask: Tensor, response_len: int, *, group_size: int = 1
) -> Tensor:
    """Teacher-forced logits that predict the response tokens: [B, T, V] (fp32).

    Column t of the result scores response token t (the model's output one position earlier).
    `group_size` G > 1: rows g*G .. g*G+G-1 share their prompt, which then runs once per group
    (`shared_prompt_hidden`).
    """
    if group_size > 1:
        hidden = shared_prompt_hidden(model, input_ids, attention_mask, response_len, group_size)
        return model.get_output_embeddings()(hidden).float()  # (B, T, V)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    padded = not bool(attention_mask.all())
    logits = model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1] if padded else None,
        position_ids=position_ids[:, :-1],
        use_cache=False,
        logits_to_keep=response_len,  # only the T columns we need go through the output layer
    ).logits  # (B, T, V)
    return logits[:, -response_len:].float()


def response_hidden(
    model, input_ids: Tensor, attention_mask: Tensor, response_len: int, *, group_size: int = 1
) -> Tensor:
    """Final hidden states that predict the response tokens: [B, T, D] (column t scores token t).

    `group_size` G > 1: the prompt runs once per group of G rows (`shared_prompt_hidden`).
    """
    from entropy_dynamics.models import model_hidden

    if group_size > 1:
        return shared_prompt_hidden(model, input_ids, attention_mask, response_len, group_size)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    padded = not bool(attention_mask.all())
    hidden = model_hidden(
        model, input_ids[:, :-1], attention_mask[:, :-1] if padded else None,
        position_ids=position_ids[:, :-1],
    )  # fmt: skip  # (B, P + T - 1, D)
    return hidden[:, -response_len:]


def shared_prompt_hidden(
    model, input_ids: Tensor, attention_mask: Tensor, response_len: int, group_size: int
) -> Tensor:
    """`response_hidden` with each prompt run once for its G rows: [B, T, D].

    input_ids, attention_mask: [B, P + T], rows g*G .. g*G+G-1 with the same prompt columns.
    The prompt pass ([B/G, P], with its gradient) fills a KV cache that is repeated G times
    (`repeat_interleave`, whose backward sums the G rows' gradients into the prompt's); the
    response pass then reads it. The same function as the full pass, so the same values and
    gradients up to float rounding, for 8 P + B T token positions instead of B (P + T)
    (G = 8): the prompt's share of the forward, backward and activation memory shrinks G-fold.
    """
    B, width = input_ids.shape
    P, G = width - response_len, group_size
    if B % G or P < 1:
        raise ValueError(f"input_ids [B={B}, P+T={width}]: need B divisible by G={G} and P >= 1")
    prompt_ids, prompt_mask = input_ids[::G, :P], attention_mask[::G, :P]  # (B/G, P)
    if not torch.equal(prompt_ids.repeat_interleave(G, 0), input_ids[:, :P]):
        raise ValueError(f"rows are not grouped by prompt in runs of group_size={G}")
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P + T)
    padded = not bool(attention_mask.all())
    base = model.base_model
    out = base(input_ids=prompt_ids, attention_mask=prompt_mask if padded else None,
               position_ids=position_ids[::G, :P], use_cache=True)  # fmt: skip
    first = out.last_hidden_state[:, -1:].repeat_interleave(G, 0)  # (B, 1, D): scores token 0
    if response_len == 1:
        return first
    cache = _returned_cache(out)
    cache.batch_repeat_interleave(G)  # (B, H_kv, P, hd) per layer, differentiable
    rest = base(
        input_ids=input_ids[:, P:-1], attention_mask=attention_mask[:, :-1] if padded else None,
        position_ids=position_ids[:, P:-1], use_cache=True, **_cache_kwargs(base, cache),
    ).last_hidden_state  # fmt: skip  # (B, T - 1, D)
    return torch.cat([first, rest], 1)
