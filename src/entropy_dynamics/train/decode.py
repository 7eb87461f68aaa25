"""A lean prefill and decoding step for Hugging Face Llama models, used by the sampler.

On a tiny model much of each `model(...)` call of a decoding step is Python: module dispatch,
mask construction, output wrappers, cache bookkeeping, as much again as the kernels themselves
(measured in docs/training.md). `LlamaDecoder` runs the arithmetic of `LlamaForCausalLM.forward`, op for op and
in the same order, on the model's own parameters, with a preallocated KV cache: the prompt in
one causal pass when no row is padded (otherwise HF's own prefill, whose cache it copies), then
one token per row per step. `tests/test_train_decode.py` checks that its logits equal HF's;
models it does not cover (other architectures, non-default RoPE, eager attention, training
mode, wrapped layers or hooks) get `None` from `llama_decoder` and the sampler calls the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def llama_decoder(model, prompt_positions: Tensor, *, steps: int):
    """An empty `LlamaDecoder` for `model`, or None when the model is not covered.

    prompt_positions: [B, P] position ids of the prompt columns (0 under left padding);
    steps: how many tokens will be fed after the prompt. Fill it with `prefill` (unpadded
    prompts) or `load` (the cache of HF's own prefill).
    """
    if not _supported(model):
        return None
    with torch.no_grad():
        arange = torch.arange(1, steps + 1, device=prompt_positions.device)
        positions = torch.cat([prompt_positions, prompt_positions[:, -1:] + arange], 1)
        embed = model.model.embed_tokens.weight
        cos, sin = model.model.rotary_emb(embed, positions)  # (B, P + steps, hd): HF's own tables
    return LlamaDecoder(model, prompt_positions.shape[1], cos, sin)


def _supported(model) -> bool:
    """True for an eval-mode, unwrapped `LlamaForCausalLM` with SDPA attention and default RoPE."""
    try:
        from transformers import LlamaForCausalLM
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return False
    if type(model) is not LlamaForCausalLM or model.training:
        return False
    config = model.config
    rope = getattr(config, "rope_parameters", None) or {}
    if (
        config._attn_implementation != "sdpa"
        or config.hidden_act != "silu"
        or rope.get("rope_type", "default") != "default"
        or model.model.rotary_emb.attention_scaling != 1.0
        or type(model.lm_head) is not nn.Linear
        or type(model.model.embed_tokens) is not nn.Embedding
        or type(model.model.norm) is not LlamaRMSNorm
    ):
        return False
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                   mlp.gate_proj, mlp.up_proj, mlp.down_proj)  # fmt: skip
        if (
            type(layer) is not LlamaDecoderLayer
            or any(type(m) is not nn.Linear for m in linears)
            or type(layer.input_layernorm) is not LlamaRMSNorm
            or type(layer.post_attention_layernorm) is not LlamaRMSNorm
        ):
            return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _rms_norm(x: Tensor, norm) -> Tensor:
    """LlamaRMSNorm.forward, op for op."""
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * x.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaDecoder:
    """One-token decoding steps of a `LlamaForCausalLM` with a preallocated KV cache.

    Holds K/V buffers [B, H_kv, P + steps, hd] per layer, filled by `prefill` or `load`; `step`
    appends one token per row. Both return the next-token logits [B, V] (fp32).
    """

    def __init__(self, model, prompt_len: int, cos: Tensor, sin: Tensor):
        """cos, sin: [B, P + steps, hd] rotary tables, one column per cache column."""
        self.model = model
        config, weight = model.config, model.model.embed_tokens.weight
        B, size = cos.shape[:2]
        head_dim = model.model.layers[0].self_attn.head_dim
        shape = (B, config.num_key_value_heads, size, head_dim)
        self.keys = [weight.new_empty(shape) for _ in model.model.layers]
        self.values = [weight.new_empty(shape) for _ in model.model.layers]
        self.prompt_len, self.length = prompt_len, 0
        self.cos, self.sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, P + steps, hd)

    def load(self, prompt_cache) -> bool:
        """Copy HF's prompt cache ([B, H_kv, P, hd] per layer) in; False if its layout is unknown."""
        layers = getattr(prompt_cache, "layers", None)
        if layers is None or len(layers) != len(self.keys):
            return False
        P = self.prompt_len
        for i, layer in enumerate(layers):
            k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
            if k is None or v is None or k.shape != self.keys[i][:, :, :P].shape:
                return False
            self.keys[i][:, :, :P], self.values[i][:, :, :P] = k, v
        self.length = P
        return True

    def repeat_rows(self, repeats: int) -> None:
        """Repeat every row `repeats` times in place (rows r*repeats .. r*repeats+repeats-1 = row r).

        Lets G samples of one prompt share a single prefill of it.
        """
        for cache in (self.keys, self.values):
            cache[:] = [c.repeat_interleave(repeats, 0) for c in cache]
        self.cos = self.cos.repeat_interleave(repeats, 0)
        self.sin = self.sin.repeat_interleave(repeats, 0)

    @torch.inference_mode()
    def prefill(self, prompt_ids: Tensor) -> Tensor:
        """Run an unpadded prompt batch [B, P] (causal attention); next-token logits [B, V]."""
        if self.length or prompt_ids.shape[1] != self.prompt_len:
            raise ValueError(f"prompt_ids: expected [B, {self.prompt_len}] into an empty cache")
        return self._forward(prompt_ids, None)

    @torch.inference_mode()  # less per-op bookkeeping than no_grad; the logits go out as data
    def step(self, token: Tensor, attention: Tensor | None) -> Tensor:
        """Logits [B, V] after feeding `token` [B]; `attention` [B, P + t + 1] or None (no padding)."""
        mask = None if attention is None else attention[:, None, None, :].bool()  # (B, 1, 1, L)
        return self._forward(token[:, None], mask)

    def _forward(self, ids: Tensor, mask: Tensor | None) -> Tensor:
        """LlamaForCausalLM.forward on `ids` [B, S] after the cached columns; logits [B, V]."""
        model = self.model
        config = model.config
        B, S = ids.shape
        start, L = self.length, self.length + S
        cos, sin = self.cos[:, :, start:L], self.sin[:, :, start:L]  # (B, 1, S, hd)
        hidden = model.model.embed_tokens(ids)  # (B, S, D)
        n_rep = config.num_attention_heads // config.num_key_value_heads
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            residual = hidden
            x = _rms_norm(hidden, layer.input_layernorm)
            q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(B, S, -1, attn.head_dim)
            k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(B, S, -1, attn.head_dim)
            v = F.linear(x, attn.v_proj.weight, attn.v_proj.bias).view(B, S, -1, attn.head_dim)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            self.keys[i][:, :, start:L] = k
            self.values[i][:, :, start:L] = v
            out = self._attention(q, self.keys[i][:, :, :L], self.values[i][:, :, :L], mask,
                                  attn.scaling, n_rep)  # fmt: skip
            out = out.reshape(B, S, -1).contiguous()
            hidden = residual + F.linear(out, attn.o_proj.weight, attn.o_proj.bias)
            residual = hidden
            x = _rms_norm(hidden, layer.post_attention_layernorm)
            gate = F.silu(F.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias))
            up = F.linear(x, mlp.up_proj.weight, mlp.up_proj.bias)
            hidden = residual + F.linear(gate * up, mlp.down_proj.weight, mlp.down_proj.bias)
        hidden = _rms_norm(hidden[:, -1:], model.model.norm)  # only the last column is scored
        logits = F.linear(hidden, model.lm_head.weight, model.lm_head.bias)  # (B, 1, V)
        self.length = L
        return logits[:, -1].float()

    @staticmethod
    def _attention(q, k, v, mask, scaling, n_rep):
        """HF's sdpa_attention_forward: causal for a prompt, GQA handled as HF does. [B, S, H, hd]."""
        S = q.shape[2]
        extra = {}
        if n_rep > 1:
            if mask is None:
                extra["enable_gqa"] = True
            else:  # one query token under a mask: HF packs query heads onto their key/value head
                q = q.reshape(q.shape[0], q.shape[1] // n_rep, n_rep, q.shape[-1])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0,
                                             scale=scaling, is_causal=S > 1 and mask is None,
                                             **extra)  # fmt: skip
        out = out.reshape(out.shape[0], -1, S, v.shape[-1])
        return out.transpose(1, 2).contiguous()
