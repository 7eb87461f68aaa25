"""The public names of ARCHITECTURE.md are importable from the package top, and stay light."""

import subprocess
import sys

import entropy_dynamics as ed

PUBLIC = [
    "entropy",
    "discriminator",
    "vocab_baseline",
    "predict_entropy_change",
    "predict_single_logit_change",
    "predict_grpo_step_change",
    "token_stats",
    "token_stats_from_hidden",
    "TokenStats",
    "clip_b_mask",
    "clip_v_mask",
    "grpo_advantages",
    "methods",
    "aggregate",
]


def test_public_names_are_exported():
    missing = [name for name in PUBLIC if not hasattr(ed, name)]
    assert missing == []
    assert set(PUBLIC) <= set(ed.__all__)
    assert callable(ed.methods.get) and "clip_b" in ed.methods.names()


def test_import_pulls_no_heavy_frameworks():
    code = (
        "import sys, entropy_dynamics; "
        "print(sorted(m for m in ('transformers', 'trl', 'matplotlib', 'verl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
