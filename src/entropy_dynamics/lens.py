"""The unified lens (PAPER.md sec. 4): each token's predicted entropy contribution, and which
tokens each method would drop, clip, penalise or reweight.

Example:
    >>> lens = entropy_lens(batch, lr=1e-6)          # batch: methods.TokenBatch with baseline
    >>> print(lens.format_table())
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import methods as methods_registry
from . import metric_names, theory
from .distributed import global_sum, masked_mean_std
from .methods import TokenBatch

__all__ = ["QUADRANTS", "Lens", "entropy_lens", "predicted_entropy_change", "token_contributions"]

# (advantage sign, S_* relative to N): Theorem 3.3 says A > 0 with S > N lowers entropy, ...
QUADRANTS = ("A>0, S>N", "A>0, S<=N", "A<0, S>N", "A<0, S<=N")
TOUCH_KINDS = ("dropped", "clipped", "penalised", "reweighted")


def token_contributions(batch: TokenBatch, *, lr: float, ratio: Tensor | None = None) -> Tensor:
    """Predicted first-order entropy change of each token's update, ``[B, T]`` (0 at padding).

    Theorem 3.3 applied per position: ``-alpha_t (S_t - N_t)`` with ``alpha_t = lr r_t A_t``;
    ``ratio`` r defaults to ``exp(logprobs - old_logprobs)``. Equals
    ``theory.predict_grpo_step_change(logits, token, alpha)`` at every position.
    """
    if batch.baseline is None:
        raise ValueError("the lens needs TokenBatch.baseline (N); compute it with token_stats")
    if ratio is None:
        ratio = torch.exp(batch.logprobs.detach() - batch.old_logprobs.detach())
    elif ratio.shape != batch.mask.shape:
        raise ValueError(
            f"ratio must be [B, T] = {tuple(batch.mask.shape)}, got {tuple(ratio.shape)}"
        )
    alpha = theory.nominal_step(lr, batch.advantages, ratio=ratio)
    contribution = -alpha * (batch.discriminator - batch.baseline)
    return torch.where(batch.mask, contribution.detach(), 0.0)


def predicted_entropy_change(
    batch, *, lr: float, ratio: Tensor | None = None, group=None
) -> dict[str, Tensor]:
    """``{PRED_DELTA: mean over valid tokens of -lr r_t A_t (S_t - N_t)}`` (Theorem 3.3).

    ``batch``: a ``methods.TokenBatch`` with ``baseline``; ``ratio``: optional ``[B, T]``.
    The per-position first-order prediction of one step's entropy change (each position's logits
    moved by its own token's update only), averaged batch-globally; compare it with the change of
    ``ENTROPY_MEAN`` at the same positions after the step.
    """
    contribution = token_contributions(batch, lr=lr, ratio=ratio)
    mean, _, _ = masked_mean_std(contribution, batch.mask, group=group)
    return {metric_names.PRED_DELTA: mean}


def _quadrants(batch: TokenBatch) -> dict[str, Tensor]:
    above = batch.discriminator > batch.baseline
    positive, negative = batch.advantages > 0, batch.advantages < 0
    masks = (positive & above, positive & ~above, negative & above, negative & ~above)
    return {name: batch.mask & m for name, m in zip(QUADRANTS, masks, strict=True)}


def _touched(method, batch: TokenBatch, group) -> dict[str, Tensor]:
    """Bool ``[B, T]`` per kind: tokens the method drops, clips, penalises or reweights."""
    plan = method.plan(batch, group=group)
    ratio = torch.exp(batch.logprobs.detach() - batch.old_logprobs.detach())
    penalised = torch.zeros_like(batch.mask)
    for selected in plan.selected.values():
        penalised |= selected
    return {
        "dropped": batch.mask & ~plan.keep,
        "clipped": method.clipped(ratio, batch.advantages, plan),
        "penalised": plan.keep & penalised,
        "reweighted": plan.keep & (plan.weight != 1),
    }


@dataclass(frozen=True)
class Lens:
    """The lens on one batch; every number is a batch-global tensor.

    ``contribution``: ``[B, T]`` per-token prediction; ``total``: its sum; ``quadrants``:
    ``{quadrant: (count, sum)}``; ``methods``: ``{spec name: {kind: (count, sum, n_raise,
    n_lower)}}`` for kind in dropped / clipped / penalised / reweighted, where n_raise (n_lower)
    counts the touched tokens whose own predicted contribution raises (lowers) entropy;
    ``dense``: method names with a vocabulary-wide term (entropy bonus: ``dH ~ beta |S|^2 > 0``,
    not a per-token quantity).
    """

    lr: float
    contribution: Tensor
    num_tokens: Tensor
    total: Tensor
    quadrants: dict[str, tuple[Tensor, Tensor]]
    methods: dict[str, dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]]
    dense: tuple[str, ...]

    def format_table(self) -> str:
        """A printable table: the quadrant split, then what each method touches.

        Quadrant columns: `tokens` (count), `% tokens` (of all valid tokens), `sum dH` (their
        summed predicted contribution) and `% of |dH|` (the quadrant's |sum dH| over the sum of
        the four quadrants' |sum dH|: how much of the predicted movement it carries). Method
        cells: `n (raise/lower) sum dH`, the touched tokens, how many of them have a
        contribution that raises / lowers entropy, and their summed contribution.
        """
        total_tokens = max(int(self.num_tokens), 1)
        moved = max(float(sum(s.abs() for _, s in self.quadrants.values())), 1e-300)
        quadrant_rows = [("quadrant", "tokens", "% tokens", "sum dH", "% of |dH|")]
        for name, (count, total) in self.quadrants.items():
            quadrant_rows.append(
                (
                    name,
                    f"{int(count)}",
                    f"{int(count) / total_tokens:.1%}",
                    f"{float(total):+.4e}",
                    f"{float(total.abs()) / moved:.1%}",
                )
            )
        method_rows = [("method", *TOUCH_KINDS), ("", *["n (raise/lower) sum dH"] * 4)]
        for name, kinds in self.methods.items():
            cells = []
            for kind in TOUCH_KINDS:
                count, total, n_raise, n_lower = kinds[kind]
                cells.append(
                    "-"
                    if int(count) == 0
                    else f"{int(count)} ({int(n_raise)}/{int(n_lower)}) {float(total):+.2e}"
                )
            method_rows.append((name, *cells))
        lines = [
            f"unified lens: predicted entropy change dH = -lr r A (S - N) per token, "
            f"lr={self.lr:g}, {int(self.num_tokens)} tokens, total {float(self.total):+.4e}",
            "",
            *_aligned(quadrant_rows),
            "% of |dH|: the quadrant's |sum dH| over the four quadrants' sum of |sum dH|",
            "",
        ]
        for (name, *_), line in zip(method_rows, _aligned(method_rows), strict=True):
            note = "  + dense bonus (raises H)" if name in self.dense else ""
            lines.append(line + note)
        return "\n".join(lines)


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as text columns: the first left-aligned, the others right-aligned, 2 spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        row[0].ljust(widths[0])
        + "".join("  " + cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        for row in rows
    ]


def entropy_lens(
    batch: TokenBatch,
    *,
    lr: float,
    ratio: Tensor | None = None,
    methods: Iterable[str] | None = None,
    group=None,
) -> Lens:
    """Read one batch through the unified lens (PAPER.md sec. 4).

    ``batch``: a TokenBatch with ``baseline`` (N); ``lr``: the learning rate eta; ``ratio``:
    optional ``[B, T]`` importance ratios; ``methods``: specs to read (default: every preset at
    its defaults). Statistics are batch-global over ``group``. Returns a ``Lens``.
    """
    contribution = token_contributions(batch, lr=lr, ratio=ratio)
    raising, lowering = batch.mask & (contribution > 0), batch.mask & (contribution < 0)

    def stats(selection: Tensor) -> Tensor:
        return global_sum(
            torch.stack(
                [
                    selection.sum().to(contribution.dtype),
                    torch.where(selection, contribution, 0.0).sum(),
                    (selection & raising).sum().to(contribution.dtype),
                    (selection & lowering).sum().to(contribution.dtype),
                ]
            )
        )

    quadrants = {name: tuple(stats(sel)[:2]) for name, sel in _quadrants(batch).items()}
    specs = list(methods) if methods is not None else methods_registry.names("preset")
    table, dense = {}, []
    for spec in specs:
        method = methods_registry.build(spec)
        table[spec] = {
            kind: tuple(stats(sel)) for kind, sel in _touched(method, batch, group).items()
        }
        if method.needs_entropy:
            dense.append(spec)
    total = global_sum(contribution.sum())
    return Lens(
        lr=float(lr),
        contribution=contribution,
        num_tokens=global_sum(batch.mask.sum()),
        total=total,
        quadrants=quadrants,
        methods=table,
        dense=tuple(dense),
    )
