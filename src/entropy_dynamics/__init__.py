"""entropy-dynamics: predict, measure and control policy entropy in RL fine-tuning of LMs.

The public names of ARCHITECTURE.md, loaded on first use: importing the package imports
nothing heavy, and using a public name pulls in torch and numpy only.
"""

import importlib
import types

# name -> the submodule that defines it. Loaded on first use (PEP 562), so that the command
# line (`entropy-dynamics --help`) and `import entropy_dynamics.cli` do not import torch.
_PUBLIC = {
    "methods": "methods",
    "token_stats_from_hidden_vocab_parallel": "_token_stats_vocab_parallel",
    "token_stats_vocab_parallel": "_token_stats_vocab_parallel",
    "grpo_advantages": "advantages",
    "aggregate": "aggregation",
    "clamped_entropy": "clamped_entropy",
    "clamped_entropy_from_hidden": "clamped_entropy",
    "clip_b_mask": "methods",
    "clip_v_mask": "methods",
    **dict.fromkeys(
        (
            "discriminator",
            "entropy",
            "exact_entropy_change",
            "exact_grpo_step_change",
            "exact_single_logit_change",
            "grpo_step_delta",
            "predict_entropy_change",
            "predict_grpo_step_change",
            "predict_single_logit_change",
            "vocab_baseline",
        ),
        "theory",
    ),
    **dict.fromkeys(("TokenStats", "token_stats", "token_stats_from_hidden"), "token_stats"),
}


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'entropy_dynamics' has no attribute {name!r}")
    module = importlib.import_module(f".{_PUBLIC[name]}", __name__)
    value = module if name == _PUBLIC[name] and name == "methods" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


class _Package(types.ModuleType):
    """Importing the submodule `entropy_dynamics.token_stats` binds its name on the package;
    the public name `token_stats` is the function, so that binding is not kept."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in _PUBLIC and name != "methods":
            return
        super().__setattr__(name, value)


__import__("sys").modules[__name__].__class__ = _Package

__version__ = "0.1.0"

__all__ = [
    "TokenStats",
    "aggregate",
    "clamped_entropy",
    "clamped_entropy_from_hidden",
    "clip_b_mask",
    "clip_v_mask",
    "discriminator",
    "entropy",
    "exact_entropy_change",
    "exact_grpo_step_change",
    "exact_single_logit_change",
    "grpo_advantages",
    "grpo_step_delta",
    "methods",
    "predict_entropy_change",
    "predict_grpo_step_change",
    "predict_single_logit_change",
    "token_stats",
    "token_stats_from_hidden",
    "token_stats_from_hidden_vocab_parallel",
    "token_stats_vocab_parallel",
    "vocab_baseline",
]
