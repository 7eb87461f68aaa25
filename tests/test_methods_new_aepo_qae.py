"""AEPO's hysteresis switch and QAE's quantile baseline against float64 loops written from the
papers' rules (QwenLong-L1.5 sec. 4.4, Eq. 11; QAE, arXiv 2509.22611, and its verl patch)."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from _batches import token_batch
from entropy_dynamics import advantages as adv
from entropy_dynamics import diagnostics as dg
from entropy_dynamics.aggregation import aggregate
from entropy_dynamics.methods import TokenBatch, build
from entropy_dynamics.methods.aepo import aepo_switch


def _batch(seed: int, scale: float, B: int = 6, T: int = 5) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) > 0.25
    mask[:, 0] = True
    mask[-1] = False  # a row without a valid token: not counted by Eq. 11
    adv_rows = torch.tensor([1.2, -0.5, 0.0, 0.7, -1.1, 0.3], dtype=torch.float64)[:B]
    logprobs = -2 * torch.rand(B, T, generator=g, dtype=torch.float64)
    entropy = scale * torch.rand(B, T, generator=g, dtype=torch.float64)
    return token_batch(mask, adv_rows, logprobs, entropy=entropy)


def _eq11(batch: TokenBatch) -> float:
    """Eq. 11: the mean over responses of each response's mean token entropy (plain loop)."""
    row_means = []
    for b in range(batch.mask.shape[0]):
        values = [float(batch.entropy[b, t]) for t in range(batch.mask.shape[1])
                  if batch.mask[b, t]]  # fmt: skip
        if values:
            row_means.append(sum(values) / len(values))
    return sum(row_means) / len(row_means)


def _token_mean(batch: TokenBatch) -> float:
    values = [float(batch.entropy[b, t]) for b, t in batch.mask.nonzero().tolist()]
    return sum(values) / len(values)


def test_aepo_switch_hand_cases():
    assert aepo_switch(False, 0.35, low=0.1, high=0.3) is True  # rises above high: on
    assert aepo_switch(True, 0.2, low=0.1, high=0.3) is True  # inside the band: held
    assert aepo_switch(False, 0.2, low=0.1, high=0.3) is False  # inside the band: held
    assert aepo_switch(True, 0.05, low=0.1, high=0.3) is False  # falls below low: off
    assert aepo_switch(True, 0.1, low=0.1, high=0.3) is True  # at a bound: not past it
    assert aepo_switch(False, 0.3, low=0.1, high=0.3) is False


@pytest.mark.parametrize("entropy_mean", ["seq-mean-token-mean", "token-mean"])
def test_aepo_matches_the_papers_rule_over_steps(entropy_mean):
    """Entropy up through high, down through the band, below low, up again: the switch and the
    kept tokens of every step as the paper states them (sec. 4.4), from a plain loop."""
    low, high = 0.4, 0.8
    method = build(f"ppo + aepo(low={low}, high={high}, entropy_mean='{entropy_mean}')")
    measure = _eq11 if entropy_mean == "seq-mean-token-mean" else _token_mean
    on, seen = False, set()
    for step, scale in enumerate([1.0, 2.0, 1.2, 1.0, 0.4, 1.2, 2.2, 0.3]):
        batch = _batch(step, scale)
        h = measure(batch)
        on = True if h > high else False if h < low else on  # the paper's rule
        seen.add(("held " if low <= h <= high else "set ") + ("on" if on else "off"))
        plan = method.plan(batch)
        assert plan.metrics[dg.AEPO_ENTROPY].item() == pytest.approx(h, rel=1e-6)
        assert plan.metrics[dg.AEPO_ON].item() == float(on)
        assert method.state["aepo"]["on"].item() is on
        for b, t in [(b, t) for b in range(6) for t in range(5)]:
            want = bool(batch.mask[b, t]) and (not on or float(batch.advantages[b, t]) > 0)
            assert bool(plan.keep[b, t]) is want, (step, b, t)
        n_kept = sum(1 for b, t in batch.mask.nonzero().tolist()
                     if not on or float(batch.advantages[b, t]) > 0)  # fmt: skip
        assert int(plan.num_tokens) == n_kept
        n_neg = int((batch.mask & (batch.advantages < 0)).sum())
        assert plan.metrics[dg.AEPO_FRAC_DROPPED_NEG].item() == (1.0 if on and n_neg else 0.0)
        assert plan.metrics[dg.AEPO_FRAC_DROPPED_POS].item() == 0.0
    # every branch of the rule was taken: on, held on in the band, off, held off in the band
    assert seen == {"set on", "held on", "set off", "held off"}


def test_aepo_drops_negative_samples_from_the_token_mean_as_the_authors_snippet():
    """While on, the loss is the token mean over the A > 0 responses only (the snippet keeps
    ``advantages > 0`` rows and drops the rest from the batch); ``denominator='valid'`` keeps
    the dropped tokens counted with zero loss."""
    batch = _batch(0, 2.0)  # entropy far above high
    B, T = batch.mask.shape
    logprobs = batch.logprobs.clone()
    old = logprobs - 0.1
    for denominator in ("kept", "valid"):
        method = build(f"ppo + aepo(low=0.1, high=0.3, denominator='{denominator}')")
        plan = method.plan(batch)
        token_loss, _ = method.token_loss(logprobs=logprobs, old_logprobs=old,
                                          advantages=batch.advantages, plan=plan)  # fmt: skip
        ours = aggregate(token_loss, plan.keep, "token-mean", num_tokens=plan.num_tokens)
        total, count = 0.0, 0
        for b in range(B):
            for t in range(T):
                a = float(batch.advantages[b, t])
                if not batch.mask[b, t] or (denominator == "kept" and a <= 0):
                    continue
                r = math.exp(float(logprobs[b, t] - old[b, t]))
                loss = max(-a * r, -a * min(max(r, 0.8), 1.2)) if a > 0 else 0.0
                total, count = total + loss, count + 1
        assert float(ours) == pytest.approx(total / count, rel=1e-12)


def test_aepo_state_resumes_exactly_from_state_dict():
    """A method rebuilt from ``state_dict()`` after step 2 plans the later steps as the one that
    ran straight through; a fresh one (switch off) does not."""
    spec = "ppo + aepo(low=0.4, high=0.8)"
    scales = [2.0, 1.2, 1.1, 0.3, 1.2]  # on, held on, held on, off, held off
    straight = build(spec)
    for step in range(2):
        straight.plan(_batch(step, scales[step]))
    resumed, fresh = build(spec), build(spec)
    resumed.load_state_dict(straight.state_dict())
    assert resumed.state["aepo"]["on"].item() is True
    for step in range(2, len(scales)):
        want = straight.plan(_batch(step, scales[step])).keep
        assert torch.equal(resumed.plan(_batch(step, scales[step])).keep, want)
        if step == 2:  # held on by the state: a fresh switch would keep every token
            assert not torch.equal(fresh.plan(_batch(step, scales[step])).keep, want)


def test_aepo_arguments_are_checked():
    with pytest.raises(ValueError, match=r"aepo: high must lie in \[0.5"):
        build("aepo(low=0.5, high=0.2)")
    with pytest.raises(ValueError, match="entropy_mean must be one of"):
        build("aepo(entropy_mean='mean')")
    method = build("aepo")
    assert method.updated_after_step == ()  # the switch moves in the plan, as Clip-Cov's draw


# --- QAE -------------------------------------------------------------------------------------


def _quantile(values: list[float], k: float, method: str) -> float:
    """The k-quantile of a list, written from the definitions (numpy's 'linear', 'inverted_cdf')."""
    ordered = sorted(values)
    if method == "linear":  # position (n - 1) k between neighbours, as torch.quantile
        position = (len(ordered) - 1) * k
        lower = math.floor(position)
        upper = min(lower + 1, len(ordered) - 1)
        return ordered[lower] + (position - lower) * (ordered[upper] - ordered[lower])
    for j, value in enumerate(ordered, start=1):  # the smallest x with F(x) >= k
        if j / len(ordered) >= k:
            return value
    raise AssertionError


def _qae_reference(rewards, G, k, method, norm_by_std, eps=1e-6):
    out = []
    for start in range(0, len(rewards), G):
        group = rewards[start : start + G]
        baseline = _quantile(group, k, method)
        std = statistics.stdev(group)
        out += [(r - baseline) / (std + eps) if norm_by_std else r - baseline for r in group]
    return out


@pytest.mark.parametrize("quantile", ["linear", "inverted_cdf"])
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_qae_matches_a_float64_loop(quantile, norm_by_std):
    rng = random.Random(0)
    for G, k in [(8, 0.4), (5, 0.4), (6, 0.5), (16, 0.25), (3, 0.9)]:
        binary = [float(rng.random() < 0.6) for _ in range(4 * G)]
        graded = [rng.choice([0.0, 0.25, 0.5, 1.0]) for _ in range(4 * G)]
        for rewards in (binary, graded):
            got = adv.get("qae")(torch.tensor(rewards, dtype=torch.float64), G, k=k,
                                 quantile=quantile, norm_by_std=norm_by_std)  # fmt: skip
            want = _qae_reference(rewards, G, k, quantile, norm_by_std)
            assert got.dtype == torch.float64
            assert got.tolist() == pytest.approx(want, rel=1e-12, abs=1e-12), (G, k)


def test_qae_hand_values_and_the_two_regime_gate():
    # G = 5, k = 0.4, linear: position 1.6 of [0, 0, 0, 0, 1] -> baseline 0; std sqrt(0.2)
    got = adv.qae_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]), 5)
    torch.testing.assert_close(got, torch.tensor([1, 0, 0, 0, 0]) / (math.sqrt(0.2) + 1e-6))
    # the paper's gate with the inverted-CDF quantile, 0/1 rewards, G = 8, K = 0.4: baseline 0
    # for success rate p <= 1 - K = 0.6 (only successes move), else 1 (only failures move)
    for successes in range(9):
        rewards = torch.tensor([1.0] * successes + [0.0] * (8 - successes))
        a = adv.qae_advantages(rewards, 8, k=0.4, quantile="inverted_cdf", norm_by_std=False)
        if successes / 8 <= 0.6:
            assert a.tolist() == [1.0] * successes + [0.0] * (8 - successes)
        else:
            assert a.tolist() == [0.0] * successes + [-1.0] * (8 - successes)
    # the authors' torch.quantile (linear) leaves a fractional baseline at p = 5/8: 3 failures,
    # sorted position 7 * 0.4 = 2.8 between a 0 and a 1
    rewards = torch.tensor([1.0] * 5 + [0.0] * 3)
    a = adv.qae_advantages(rewards, 8, k=0.4, norm_by_std=False)
    torch.testing.assert_close(a, torch.tensor([0.2] * 5 + [-0.8] * 3))


def test_qae_part_preset_group_of_one_and_arguments():
    method = build("qae")
    assert method.advantage.spec == "qae(k=0.4, quantile='linear', norm_by_std=True)"
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(method.advantage.advantages(rewards, 3),
                               adv.qae_advantages(rewards, 3))  # fmt: skip
    other = build("ppo + qae(k=0.5, quantile='inverted_cdf', norm_by_std=False)").advantage
    assert other.advantages(rewards, 3).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert adv.qae_advantages(torch.tensor([1.0, 0.0]), 1).tolist() == [0.0, 0.0]
    torch.testing.assert_close(adv.qae_advantages(torch.tensor([1.0]), 1, group_of_one="reward"),
                               torch.tensor([1.0 / (1 + 1e-6)]))  # fmt: skip
    for bad in ("k=0.0", "k=1.0", "quantile='nearest'", "norm_by_std=1"):
        with pytest.raises(ValueError, match="qae: "):
            build(f"qae({bad})")
    with pytest.raises(ValueError, match="for the mean, use 'grpo'"):
        adv.qae_advantages(rewards, 3, k=1.0)
