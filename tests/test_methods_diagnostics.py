"""diagnostics: drop fractions, entropy metrics and the predicted entropy change, hand-checked."""

from __future__ import annotations

import pytest
import torch

from _batches import token_batch
from entropy_dynamics import diagnostics as dg
from entropy_dynamics.lens import predicted_entropy_change


def test_drop_fractions_hand_computed():
    mask = torch.tensor([[True, True, True, True, False]])
    keep = torch.tensor([[True, False, False, True, False]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]])
    names = (dg.CLIP_B_FRAC_DROPPED, dg.CLIP_B_FRAC_DROPPED_POS, dg.CLIP_B_FRAC_DROPPED_NEG)
    out = dg.drop_fractions(keep, mask, advantages, names=names)
    # 2 of 4 valid dropped; of A > 0 (tokens 0, 1) one; of A < 0 (tokens 2, 3) one.
    assert out[dg.CLIP_B_FRAC_DROPPED].item() == pytest.approx(0.5)
    assert out[dg.CLIP_B_FRAC_DROPPED_POS].item() == pytest.approx(0.5)
    assert out[dg.CLIP_B_FRAC_DROPPED_NEG].item() == pytest.approx(0.5)
    empty = dg.drop_fractions(keep & False, mask & False, advantages, names=names)
    assert all(v.item() == 0.0 for v in empty.values())


def test_entropy_metrics_hand_computed():
    H = torch.tensor([[1.0, 2.0, 9.0]])
    S = torch.tensor([[0.1, 0.3, 9.0]])
    N = torch.tensor([[0.2, 0.2, 9.0]])
    mask = torch.tensor([[True, True, False]])
    out = dg.entropy_metrics(H, S, mask, baseline=N)
    assert out[dg.ENTROPY_MEAN].item() == pytest.approx(1.5)
    assert out[dg.DISCRIMINATOR_MEAN].item() == pytest.approx(0.2)
    assert out[dg.DISCRIMINATOR_STD].item() == pytest.approx(0.1)  # population std of 0.1, 0.3
    assert out[dg.BASELINE_MEAN].item() == pytest.approx(0.2)
    assert out[dg.DEVIATION_MEAN].item() == pytest.approx(0.0, abs=1e-7)  # (-0.1 + 0.1) / 2
    assert out[dg.DEVIATION_STD].item() == pytest.approx(0.1)
    assert dg.BASELINE_MEAN not in dg.entropy_metrics(H, S, mask)


def test_predicted_entropy_change():
    # lr 0.5, r = 1: -0.5 * A (S - N) = -0.5 * 2 * 0.1 = -0.1 and -0.5 * (-1) * 0.2 = 0.1.
    S = torch.tensor([[0.3, 0.4, 5.0]])
    N = torch.tensor([[0.2, 0.2, 0.0]])
    A = torch.tensor([[2.0, -1.0, 3.0]])
    batch = token_batch([[True, True, False]], A, discriminator=S, baseline=N)
    out = predicted_entropy_change(batch, lr=0.5)
    assert out[dg.PRED_DELTA].item() == pytest.approx(0.0, abs=1e-7)
    out = predicted_entropy_change(batch, lr=0.5, ratio=torch.tensor([[1.0, 3.0, 1.0]]))
    assert out[dg.PRED_DELTA].item() == pytest.approx((-0.1 + 0.3) / 2)


def test_metric_names_unique():
    names = [v for k, v in vars(dg).items() if k.isupper() and isinstance(v, str)]
    assert len(names) == len(set(names))
    assert dg.CLIP_B_FRAC_DROPPED == "clip_b/frac_dropped"
    assert dg.PRED_DELTA == "entropy/pred_delta" and dg.ENTROPY_MEAN == "entropy/mean"
