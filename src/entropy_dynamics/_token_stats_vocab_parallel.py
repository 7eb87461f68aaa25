"""Token statistics over a vocabulary split across ranks (tensor parallelism, as in Megatron).

Each rank of `group` holds the logits, or the output-layer rows, of one slice `[v0, v1)` of the
vocabulary; the slices, in rank order, tile `[0, V)`. Every rank computes the row sums of its
slice with its own row max `m_r` (one read, either backend), then

    1. all-reduce MAX of `m_r` -> the global row max `m`;
    2. each rank re-expresses its sums at `m` (`RowSums.rescale_to`) and zeroes the label logit
       of rows whose label another rank holds;
    3. ONE all-reduce SUM of `[s, t, u, w, label logit]` -> the sums of the whole vocabulary,

and finishes them as `token_stats` does, so every rank returns the same `TokenStats`, equal
to the unsplit result up to rounding. Backward needs no communication for the logits: each
rank writes `dL/dz` of its slice from the global `m` and `log s` (the label term only where it
holds the label). From hidden states `dL/dhidden = sum_r dL/dz_r @ W_r` is all-reduced over
`group` inside the backward pass (the role of Megatron's copy-to-tensor-parallel-region), so
do not reduce it again; `weight` and `bias` get the gradient of this rank's rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ._token_stats_kernels import RowSums
from .distributed import is_distributed
from .token_stats import TokenStats, hidden_stats, logits_stats

__all__ = ["token_stats_from_hidden_vocab_parallel", "token_stats_vocab_parallel"]


class VocabSplit:
    """The collectives of one call, for rows whose labels this rank holds where `owned`."""

    def __init__(self, group, owned: Tensor):
        self.group, self.owned = group, owned  # owned: [n] bool

    def combine(self, sums: RowSums, label_logits: Tensor, inv_tau: float) -> None:
        """This rank's sums (and label logits) -> the whole vocabulary's, in place."""
        if not is_distributed():
            return
        global_m = sums.m.clone()
        dist.all_reduce(global_m, op=dist.ReduceOp.MAX, group=self.group)
        sums.rescale_to(global_m, inv_tau)
        label = torch.where(self.owned, label_logits, 0.0)
        stacked = torch.stack([sums.s, sums.t, sums.u, sums.w, label])  # [5, n]
        dist.all_reduce(stacked, group=self.group)
        sums.s, sums.t, sums.u, sums.w = stacked[:4]
        label_logits.copy_(stacked[4])

    def owned_only(self, grad_label: Tensor) -> Tensor:
        """The label term of `dL/dz` lands only on the rank that holds the label."""
        return torch.where(self.owned, grad_label, 0.0)

    def reduce_hidden_grad(self, grad_hidden: Tensor) -> None:
        if is_distributed():
            dist.all_reduce(grad_hidden, group=self.group)


class VocabRange:
    """This rank's slice `[vocab_start, vocab_start + local)` and the checks that the slices fit."""

    def __init__(self, vocab_start: int, group):
        if isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or vocab_start < 0:
            raise ValueError(f"vocab_start must be an int >= 0, got {vocab_start!r}")
        self.start, self.group = vocab_start, group
        self.vocab_size = 0

    def check(self, local: int, labels: Tensor) -> None:
        """Gather every rank's `[v0, v1)` (one small all-gather) and refuse gaps and overlaps."""
        mine = torch.tensor([self.start, self.start + local, labels.numel()])
        if is_distributed():
            ranges = [torch.empty_like(mine) for _ in range(dist.get_world_size(self.group))]
            dist.all_gather(ranges, mine, group=self.group)
        else:
            ranges = [mine]
        slices = [tuple(int(v) for v in r[:2]) for r in ranges]
        expected = 0
        for v0, v1 in slices:
            if v0 != expected:
                raise ValueError(
                    f"the ranks' vocabulary slices [v0, v1) must tile [0, V) in rank order, "
                    f"got {slices}; pass each rank's first vocabulary id as vocab_start"
                )
            expected = v1
        if len({int(r[2]) for r in ranges}) != 1:
            raise ValueError(
                "every rank of the group must pass the same positions (labels of one shape), "
                f"got {[int(r[2]) for r in ranges]} labels"
            )
        self.vocab_size, self.local = expected, local

    def bind(self, labels: Tensor) -> tuple[VocabSplit, Tensor]:
        """`(VocabSplit, labels as ids into this rank's slice)`; rows not held get id 0."""
        local = labels - self.start
        owned = (local >= 0) & (local < self.local)
        return VocabSplit(self.group, owned), torch.where(owned, local, 0)


def token_stats_vocab_parallel(
    logits: Tensor,
    labels: Tensor,
    *,
    vocab_start: int,
    group=None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
) -> TokenStats:
    """`token_stats` of logits whose vocabulary is split across the ranks of `group`.

    Args:
        logits: `[B, T, V_r]`, this rank's columns `[vocab_start, vocab_start + V_r)` of the
            `[B, T, V]` logits; the ranks' slices, in rank order, must tile `[0, V)`.
        labels: `[B, T]` token ids in `[0, V)` (the whole vocabulary), the same on every rank.
        vocab_start: this rank's first vocabulary id (Megatron's `vocab_start_index`).
        group: the tensor-parallel process group (`None`: WORLD). Without torch.distributed
            this is `token_stats` (then `vocab_start` must be 0).
        temperature, chunk_size, mask, ignore_index, backend: as in `token_stats`.

    Returns:
        The same `TokenStats` on every rank, equal to `token_stats` of the whole logits up to
        rounding; gradients flow to this rank's `logits` slice.

    Communication per call: one all-gather of 3 integers (checks), one all-reduce MAX of `[n]`
    and one all-reduce SUM of `[5, n]` (`n` counted positions); none in the backward pass.
    """
    split = VocabRange(vocab_start, group)
    return logits_stats(logits, labels, temperature, chunk_size, mask, ignore_index, backend, split)


def token_stats_from_hidden_vocab_parallel(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    vocab_start: int,
    bias: Tensor | None = None,
    group=None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
) -> TokenStats:
    """`token_stats_from_hidden` with the output layer's rows split across the ranks of `group`.

    Args:
        hidden: `[B, T, D]`, the same on every rank.
        weight: `[V_r, D]`, rows `[vocab_start, vocab_start + V_r)` of the output layer.
        bias: optional `[V_r]`, the same rows of the output bias.
        labels, vocab_start, group, temperature, chunk_size, mask, ignore_index, backend: as in
            `token_stats_vocab_parallel` / `token_stats_from_hidden`.

    Returns:
        The same `TokenStats` on every rank. `hidden` receives the FULL gradient (all-reduced
        over `group` in the backward pass, one `[n, D]` all-reduce); `weight` and `bias` the
        gradient of this rank's rows.
    """
    split = VocabRange(vocab_start, group)
    return hidden_stats(
        hidden, weight, labels, bias, temperature, chunk_size, mask, ignore_index, backend, split
    )
