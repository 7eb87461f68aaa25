"""The paper's claims as runnable experiments, registered by name (``entropy-dynamics reproduce``).

Each experiment is a module with ``run(out_dir, *, quick=False) -> ExperimentResult``; it writes
``out_dir/NAME/result.json``, its figures and its report section (see ``common``). Modules are
imported only when run, so listing the names costs nothing.

    >>> from entropy_dynamics import experiments
    >>> experiments.names()[:2]
    ['theory', 'network']
    >>> result = experiments.run("theory", out_dir="runs/reproduce", quick=True)
"""

from __future__ import annotations

import importlib
import os
import time

from .common import ExperimentResult, write_report, write_result

__all__ = ["DESCRIPTIONS", "names", "run", "run_all"]

# name -> (module, one-line description), in report order.
_REGISTRY: dict[str, tuple[str, str]] = {
    "theory": ("theory_check", "Thm 3.2/3.3 first-order predictions vs exact entropy changes"),
    "network": ("network", "one optimiser step on a real network: predicted vs measured dH"),
    "sign-test": ("sign_test", "four-condition masking: sample sign x S_* sign moves entropy"),
    "corollary": ("corollary", "Cor. 3.5: batch mean of S_* - N vs batch mean of S_*"),
    "clipped-tokens": ("clipped_tokens", "probabilities of the tokens PPO's ratio clip removes"),
    "methods": ("methods_compare", "entropy methods side by side: entropy, avg@k, pass@k"),
    "mu": ("mu_sweep", "Clip_B / Clip_V mu sweeps: fraction dropped and entropy"),
    "entropy_target": ("entropy_target", "our controller vs fixed thresholds: holding a target H"),
}
# Run only by name, not by ``all`` (each takes over an hour on 2 cores); reported after the rest.
_LONG: dict[str, tuple[str, str]] = {
    "smollm2": ("smollm2", "SmolLM2-135M-Instruct: GRPO vs Clip_B / Clip_V vs our controller"),
}
DESCRIPTIONS = {name: desc for name, (_, desc) in {**_REGISTRY, **_LONG}.items()}


def names(*, include_long: bool = False) -> list[str]:
    """Registered experiment names, in report order: those ``all`` runs, then (with
    ``include_long``) the long ones run only by name."""
    return [*_REGISTRY, *(_LONG if include_long else ())]


def _module(name: str):
    modules = {**_REGISTRY, **_LONG}
    if name not in modules:
        raise ValueError(
            f"unknown experiment {name!r}; valid names: {', '.join(names(include_long=True))}, all"
        )
    return importlib.import_module(f"{__name__}.{modules[name][0]}")


def run(
    name: str, *, out_dir: str | os.PathLike = "runs/reproduce", quick: bool = False
) -> ExperimentResult:
    """Run experiment ``name``; write ``out_dir/name/result.json``, figures, and ``report.md``."""
    import torch

    module = _module(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is faster, and much faster under load
    start = time.perf_counter()
    try:
        result = module.run(out_dir, quick=quick)
    finally:
        torch.set_num_threads(threads)
    result.duration_s = time.perf_counter() - start
    write_result(result, out_dir)
    write_report(result, out_dir, names(include_long=True))
    return result


def run_all(
    *, out_dir: str | os.PathLike = "runs/reproduce", quick: bool = False
) -> list[ExperimentResult]:
    """Run every experiment but the long ones, in order, into one ``out_dir`` (one
    ``report.md``)."""
    return [run(name, out_dir=out_dir, quick=quick) for name in names()]
