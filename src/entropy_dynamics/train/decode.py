"""A lean one-token decoding step for Hugging Face Llama models, used by the sampler's KV-cache loop.

On a tiny model each `model(...)` call of a decoding step is mostly Python: module dispatch,
mask construction, output wrappers, cache bookkeeping (about 1.7 ms per step on the 0.14M char
Llama, where the arithmetic is a few dozen microseconds). `LlamaDecoder` runs the same
arithmetic as `LlamaForCausalLM.forward` for one new token per row, op for op and in the same
order, on the model's own parameters, with a preallocated KV cache. It takes over from HF's
prefill (the prompt goes through the model once, as before). `tests/test_train_decode.py`
checks that its logits equal HF's decoding logits; models it does not cover (other
architectures, non-default RoPE, eager attention, training mode, wrapped layers) get `None`
from `llama_decoder` and the sampler keeps calling the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def llama_decoder(model, prompt_cache, first_position: Tensor, *, steps: int):
    """A `LlamaDecoder` for `model` after its prefill, or None when the model is not covered.

    prompt_cache: the `past_key_values` HF returned for the prompt ([B, H_kv, P, hd] per layer).
    first_position: [B, 1] position id of the first token to feed; steps: how many will be fed.
    """
    if not _supported(model):
        return None
    layers = getattr(prompt_cache, "layers", None)
    if layers is None or len(layers) != len(model.model.layers):
        return None
    keys = [getattr(layer, "keys", None) for layer in layers]
    values = [getattr(layer, "values", None) for layer in layers]
    if any(k is None or k.dim() != 4 for k in keys + values):
        return None
    positions = first_position + torch.arange(steps, device=first_position.device)  # (B, steps)
    with torch.no_grad():  # the model's own rotary module: same tables as its forward builds
        cos, sin = model.model.rotary_emb(keys[0], positions)  # (B, steps, hd)
    return LlamaDecoder(model, keys, values, cos, sin)


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

    Holds K/V buffers [B, H_kv, P + T, hd] per layer, filled with the prompt's cache; `step`
    appends one token per row and returns the next-token logits [B, V] (fp32).
    """

    def __init__(self, model, keys, values, cos: Tensor, sin: Tensor):
        """keys, values: the prompt's cache per layer; cos, sin: [B, steps, hd] rotary tables."""
        self.model = model
        B, _, P, _ = keys[0].shape
        size = P + cos.shape[1]
        self.keys, self.values = [], []
        for k, v in zip(keys, values, strict=True):
            kb = k.new_empty((B, k.shape[1], size, k.shape[3]))
            vb = v.new_empty((B, v.shape[1], size, v.shape[3]))
            kb[:, :, :P], vb[:, :, :P] = k, v
            self.keys.append(kb)
            self.values.append(vb)
        self.length = P
        self.cos, self.sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd)
        self.t = 0

    @torch.inference_mode()  # less per-op bookkeeping than no_grad; the logits go out as data
    def step(self, token: Tensor, attention: Tensor | None) -> Tensor:
        """Logits [B, V] after feeding `token` [B]; `attention` [B, P + t + 1] or None (no padding)."""
        model = self.model
        config = model.config
        t, L = self.t, self.length + 1
        cos, sin = self.cos[:, :, t : t + 1], self.sin[:, :, t : t + 1]  # (B, 1, 1, hd)
        mask = None if attention is None else attention[:, None, None, :].bool()  # (B, 1, 1, L)
        hidden = model.model.embed_tokens(token[:, None])  # (B, 1, D)
        B = hidden.shape[0]
        n_rep = config.num_attention_heads // config.num_key_value_heads
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            residual = hidden
            x = _rms_norm(hidden, layer.input_layernorm)
            q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(B, 1, -1, attn.head_dim)
            k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(B, 1, -1, attn.head_dim)
            v = F.linear(x, attn.v_proj.weight, attn.v_proj.bias).view(B, 1, -1, attn.head_dim)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            self.keys[i][:, :, L - 1 : L] = k
            self.values[i][:, :, L - 1 : L] = v
            out = self._attention(q, self.keys[i][:, :, :L], self.values[i][:, :, :L], mask,
                                  attn.scaling, n_rep)  # fmt: skip
            out = out.reshape(B, 1, -1).contiguous()
            hidden = residual + F.linear(out, attn.o_proj.weight, attn.o_proj.bias)
            residual = hidden
            x = _rms_norm(hidden, layer.post_attention_layernorm)
            gate = F.silu(F.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias))
            up = F.linear(x, mlp.up_proj.weight, mlp.up_proj.bias)
            hidden = residual + F.linear(gate * up, mlp.down_proj.weight, mlp.down_proj.bias)
        hidden = _rms_norm(hidden, model.model.norm)
        logits = F.linear(hidden, model.lm_head.weight, model.lm_head.bias)  # (B, 1, V)
        self.length, self.t = L, t + 1
        return logits[:, -1].float()

    @staticmethod
    def _attention(q, k, v, mask, scaling, n_rep):
        """HF's sdpa_attention_forward for one query token, including its GQA handling."""
        extra = {}
        if n_rep > 1:
            if mask is None:
                extra["enable_gqa"] = True
            else:  # HF packs the query heads onto their key/value head
                q = q.reshape(q.shape[0], q.shape[1] // n_rep, n_rep, q.shape[-1])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0,
                                             scale=scaling, is_causal=False, **extra)  # fmt: skip
        out = out.reshape(out.shape[0], -1, 1, v.shape[-1])
        return out.transpose(1, 2)
