"""Tests of report/: figures, report.md, self-contained report.html and the summary table.

The run directories here are FAKE test data written by `write_fake_run`: realistic in shape
(entropy falling under GRPO and held up under Clip_B, noisy rewards, probe steps, evaluations
with unbiased pass@k, per-token S_* from random softmax distributions), not results.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from entropy_dynamics.report import FIGURES, load_run, summary_table, write_report
from entropy_dynamics.report.distributions import draw_discriminator, draw_pass_rate_hist
from entropy_dynamics.report.figures import draw_prediction
from entropy_dynamics.report.plotting import run_colors

# --- fake run directories (test data) ---------------------------------------------------------


def _fake_dist(
    rng: np.random.Generator, num_seqs: int = 32, length: int = 24, vocab: int = 48
) -> dict[str, np.ndarray]:
    """S_*, N and A of sampled tokens of random softmax policies (float64 from the definitions)."""
    scale = rng.lognormal(mean=1.0, sigma=0.6, size=(num_seqs * length, 1))
    logits = rng.standard_normal((num_seqs * length, vocab)) * scale
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    log_p = np.log(p)
    H = -(p * log_p).sum(-1)
    token = np.array([rng.choice(vocab, p=row) for row in p])
    p_k = p[np.arange(len(token)), token]
    S = p_k * (H + np.log(p_k))  # S_* = p_k (H + log p_k)
    N = (p**2 * (H[:, None] + log_p)).sum(-1)  # N = sum_i p_i^2 (H + log p_i)
    seq_adv = rng.choice([-1.2, -0.4, 0.0, 0.5, 1.1], size=num_seqs)
    return {
        "discriminator": S.astype(np.float32),
        "baseline": N.astype(np.float32),
        "advantages": np.repeat(seq_adv, length).astype(np.float32),
        "entropy": H.astype(np.float32),
    }


def _fake_eval(
    rng: np.random.Generator, step: int, skill: float, n: int = 8, prompts: int = 64
) -> dict:
    """An eval.jsonl record: per-prompt success rates ~ Beta, counts ~ Binomial(n)."""
    rates = rng.beta(4 * skill + 0.3, 4 * (1 - skill) + 0.3, size=prompts)
    counts = rng.binomial(n, rates)
    ks = [1, 2, 4, 8]
    pass_k = {
        str(k): float(np.mean([1 - math.comb(n - c, k) / math.comb(n, k) for c in counts]))
        for k in ks
    }
    return {
        "step": step,
        "k": n,
        "num_prompts": prompts,
        "avg@k": {str(k): float(counts.mean() / n) for k in ks},
        "pass@k": pass_k,
        "greedy_acc": float(rng.binomial(prompts, min(skill + 0.05, 1)) / prompts),
        "pass_rate_hist": np.bincount(counts, minlength=n + 1).tolist(),
    }


def write_fake_run(
    run_dir: Path,
    *,
    name: str,
    method: str,
    seed: int,
    steps: int = 60,
    collapse: bool = True,
    dist: str | None = "npz",
) -> Path:
    """Write a FAKE run directory (config.yaml, metrics.jsonl, eval.jsonl, dist/) for tests."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump({"name": name, "method": {"spec": method}, "train": {"seed": seed}})
    )
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            level = (
                (0.15 + 1.05 * math.exp(-step / 20)) if collapse else (1.2 - 0.25 * step / steps)
            )
            row = {
                "step": step,
                "entropy/mean": level + 0.02 * rng.standard_normal(),
                "reward/mean": rng.binomial(64, 0.2 + 0.5 * step / steps) / 64,
                "loss/clip_frac_low": 0.0,
                "loss/clip_frac_high": 0.0,
            }
            if "clip_b" in method:
                row["clip_b/frac_dropped"] = float(rng.uniform(0.005, 0.03))
            if "clip_v" in method:  # the released cap: at most max(floor(1e-4 n), 1) tokens
                row["clip_v/frac_dropped"] = float(rng.integers(0, 2) / 1536)
            if step % 5 == 0:  # probe step
                pred = rng.normal(-2e-3 if collapse else 5e-4, 2e-3)
                row["entropy/pred_delta"] = pred
                row["entropy/pred_delta_logit"] = 0.9 * pred + rng.normal(0, 3e-4)
                row["entropy/measured_delta"] = 0.8 * pred + rng.normal(0, 6e-4)
            f.write(json.dumps(row) + "\n")
    with open(run_dir / "eval.jsonl", "w") as f:
        for step in range(0, steps + 1, 20):
            skill = 0.2 + (0.4 if collapse else 0.5) * step / steps
            f.write(json.dumps(_fake_eval(rng, step, skill)) + "\n")
    if dist is not None:
        (run_dir / "dist").mkdir()
        for step in (steps // 2, steps):
            arrays = _fake_dist(rng)
            if "clip_b" in method:  # the plan's keep: drop the lowest S_* of negative samples
                low = np.quantile(arrays["discriminator"], 0.05)
                drop = (arrays["advantages"] < 0) & (arrays["discriminator"] < low)
                arrays["keep"] = (~drop).astype(np.float32)
            if dist == "npz":
                np.savez_compressed(run_dir / "dist" / f"step-{step}.npz", **arrays)
            else:
                import torch

                torch.save(
                    {k: torch.from_numpy(v) for k, v in arrays.items()},
                    run_dir / "dist" / f"step-{step}.pt",
                )
    return run_dir


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [
        write_fake_run(root / "grpo", name="grpo", method="grpo", seed=1),
        write_fake_run(
            root / "clip_b", name="clip_b", method="grpo + clip_b(mu=2.5)", seed=1, collapse=False
        ),
    ]


@pytest.fixture(scope="module")
def report(two_runs, tmp_path_factory) -> Path:
    return write_report(two_runs, tmp_path_factory.mktemp("report"), title="Fake runs")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the full report --------------------------------------------------------------------------


def test_every_figure_is_written_and_is_a_png(report):
    out = report.parent
    for spec in FIGURES:
        data = (out / "figures" / spec.filename).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", spec.filename
        assert len(data) > 10_000, f"{spec.filename} is suspiciously small ({len(data)} bytes)"


def test_markdown_references_every_figure_and_the_table(report):
    text = report.read_text()
    assert text.startswith("# Fake runs\n")
    for spec in FIGURES:
        assert f"](figures/{spec.filename})" in text
    assert "Skipped" not in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 3  # header + one row per run
    assert table[1].startswith("| grpo | grpo | 1 | 60 |")
    assert table[2].startswith("| clip_b | grpo + clip_b(mu=2.5) | 1 | 60 |")


def test_html_is_self_contained_and_embeds_every_figure(report):
    html = (report.parent / "report.html").read_text()
    for spec in FIGURES:
        encoded = base64.b64encode((report.parent / "figures" / spec.filename).read_bytes())
        assert f'src="data:image/png;base64,{encoded.decode()}"' in html
    references = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', html, flags=re.I)
    assert references and all(ref.startswith("data:") for ref in references)
    assert not re.search(r"https?://|<link|<script|@import|url\(", html, flags=re.I)
    assert html.count("<tr>") == 3


def test_summary_table_equals_the_last_logged_values(two_runs):
    rows = summary_table(two_runs)
    for run_dir, row in zip(two_runs, rows, strict=True):
        metrics = _read_jsonl(run_dir / "metrics.jsonl")
        last_eval = _read_jsonl(run_dir / "eval.jsonl")[-1]
        assert row["steps"] == metrics[-1]["step"] == 60
        assert row["entropy"] == metrics[-1]["entropy/mean"]
        assert row["entropy_start"] == metrics[0]["entropy/mean"]
        assert row["reward"] == metrics[-1]["reward/mean"]
        assert row["eval_step"] == last_eval["step"] == 60
        assert row["k"] == 8
        assert row["avg@k"] == last_eval["avg@k"]["8"]
        assert row["pass@k"] == last_eval["pass@k"]["8"]
        assert row["greedy_acc"] == last_eval["greedy_acc"]
        assert row["seed"] == 1
    assert [r["method"] for r in rows] == ["grpo", "grpo + clip_b(mu=2.5)"]


# --- robustness -------------------------------------------------------------------------------


def test_missing_metrics_skip_figures_with_notes(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "entropy/mean": 1.0 - 0.1 * s}) + "\n" for s in range(1, 6))
    )
    md = write_report([run], tmp_path / "out")
    text = md.read_text()
    assert (tmp_path / "out" / "figures" / "entropy.png").stat().st_size > 0
    for spec in FIGURES[1:]:
        assert not (tmp_path / "out" / "figures" / spec.filename).exists()
        assert f"figures/{spec.filename}" not in text
    assert text.count("*Skipped: nothing to draw.*") == len(FIGURES) - 1
    assert "no 'reward/mean' in its training log" in text
    assert "no dist/step-N.npz" in text
    # entropy/mean is 1 - 0.1 * step: 0.9 at step 1, 0.5 at step 5; nothing else known
    assert "| bare | ? | – | 5 | 0.9 | 0.5 | – | – | – | – | – | – |" in text


def test_broken_lines_and_non_finite_values_are_skipped(tmp_path):
    run = tmp_path / "torn"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"step": 1, "entropy/mean": 1.5, "reward/mean": null}\n'
        '{"step": 2, "entropy/mean": NaN, "reward/mean": 0.25}\n'
        '{"step": 3, "entropy": {"mean": 1.25}}\n'
        '{"step": 4, "entropy/me'
    )  # torn last line after kill -9
    loaded = load_run(run)
    assert [r["step"] for r in loaded.metrics] == [1, 2, 3]
    steps, values = loaded.series("entropy/mean")
    assert steps.tolist() == [1, 3] and values.tolist() == [1.5, 1.25]  # NaN dropped, nested read
    assert loaded.last("reward/mean") == 0.25
    assert any("skipped 1 line" in note for note in loaded.notes)
    assert any("2 null/NaN/infinite" in note for note in loaded.notes)


@pytest.mark.parametrize("bad", ["missing", "empty"])
def test_a_directory_that_is_not_a_run_is_a_value_error(tmp_path, bad):
    path = tmp_path / bad
    if bad == "empty":
        path.mkdir()
    with pytest.raises(ValueError, match="run_dirs"):
        summary_table([path])
    with pytest.raises(ValueError, match="run_dirs: empty"):
        write_report([], tmp_path / "out")


def test_duplicate_run_names_are_made_unique(tmp_path):
    dirs = [
        write_fake_run(
            tmp_path / parent / "run", name="same", method="grpo", seed=2, steps=5, dist=None
        )
        for parent in ("a", "b")
    ]
    assert [row["name"] for row in summary_table(dirs)] == ["a/same", "b/same"]


def test_identical_runs_are_named_in_a_note(tmp_path):
    dirs = [
        write_fake_run(tmp_path / name, name=name, method="grpo", seed=4, steps=10, dist=None)
        for name in ("first", "second")
    ]
    text = write_report(dirs, tmp_path / "out").read_text()
    assert (
        "first, second have identical 'entropy/mean'; their marks overlap and only second "
        "is visible"
    ) in text


def test_pt_distribution_is_read_like_npz(tmp_path):
    run_dir = write_fake_run(tmp_path / "pt", name="pt", method="grpo", seed=3, steps=10, dist="pt")
    run = load_run(run_dir)
    assert run.dist_step == 10
    assert set(run.dist) == {"discriminator", "baseline", "advantages", "entropy"}
    assert run.dist["discriminator"].shape == (32 * 24,)


# --- what the figures show --------------------------------------------------------------------


def test_prediction_titles_carry_the_pooled_pearson_correlation(two_runs):
    runs = [load_run(d) for d in two_runs]
    fig, notes = draw_prediction(runs, run_colors([r.name for r in runs]))
    assert notes == []
    for ax, key in zip(fig.axes, ("entropy/pred_delta", "entropy/pred_delta_logit"), strict=True):
        pred, meas = [], []
        for d in two_runs:
            rows = [r for r in _read_jsonl(d / "metrics.jsonl") if key in r]
            pred += [r[key] for r in rows]
            meas += [r["entropy/measured_delta"] for r in rows]
        expected = np.corrcoef(pred, meas)[0, 1]
        assert f"Pearson r = {expected:.3f} over {len(pred)} probes" in ax.get_title()


def test_discriminator_histograms_split_tokens_by_advantage_sign(two_runs):
    runs = [load_run(d) for d in two_runs]
    fig, notes = draw_discriminator(runs, run_colors([r.name for r in runs]))
    assert len(fig.axes) == 4  # rows: S_*, S_* - N; columns: A > 0, A < 0
    for run in runs:
        A = run.dist["advantages"]
        n_pos, n_neg = int((A > 0).sum()), int((A < 0).sum())
        S = run.dist["discriminator"]
        pos_up, neg_up = 100 * (S[A > 0] > 0).mean(), 100 * (S[A < 0] > 0).mean()
        pos_label, neg_label = (
            t.get_text()
            for ax in fig.axes[:2]
            for t in ax.get_legend().get_texts()
            if run.name in t.get_text()
        )
        dropped = ""
        if "keep" in run.dist:
            dropped_pos = int(((A > 0) & (run.dist["keep"] == 0)).sum())
            dropped_neg = int(((A < 0) & (run.dist["keep"] == 0)).sum())
            assert dropped_pos == 0 < dropped_neg  # the fake plan drops only A < 0 tokens
            dropped = f", {dropped_pos} dropped", f", {dropped_neg} dropped"
        assert pos_label == (
            f"{run.name} (step 60): {n_pos} tokens, {pos_up:.0f}% > 0"
            + (dropped[0] if dropped else "")
        )
        assert neg_label == (
            f"{run.name} (step 60): {n_neg} tokens, {neg_up:.0f}% > 0"
            + (dropped[1] if dropped else "")
        )
        if (A == 0).any():
            assert f"{run.name}: {int((A == 0).sum())} token(s) with A = 0" in " ".join(notes)


def test_pass_rate_bars_are_shares_of_the_last_histogram(two_runs):
    runs = [load_run(d) for d in two_runs]
    fig, _ = draw_pass_rate_hist(runs, run_colors([r.name for r in runs]))
    ax = fig.axes[0]
    for container, run_dir in zip(ax.containers, two_runs, strict=True):
        hist = np.array(_read_jsonl(run_dir / "eval.jsonl")[-1]["pass_rate_hist"], float)
        heights = [bar.get_height() for bar in container]
        np.testing.assert_allclose(heights, hist / hist.sum(), rtol=0, atol=1e-12)


def test_each_run_keeps_its_colour_across_figures(two_runs):
    from matplotlib.colors import to_rgba

    from entropy_dynamics.report.figures import draw_drop_fractions, draw_entropy

    runs = [load_run(d) for d in two_runs]
    colors = run_colors([r.name for r in runs])
    assert colors["grpo"] != colors["clip_b"]
    entropy_fig, _ = draw_entropy(runs, colors)
    drop_fig, _ = draw_drop_fractions(runs, colors)
    entropy_lines = {
        line.get_label(): to_rgba(line.get_color()) for line in entropy_fig.axes[0].get_lines()
    }
    drop_lines = {
        line.get_label(): to_rgba(line.get_color()) for line in drop_fig.axes[0].get_lines()
    }
    assert entropy_lines == {"grpo": colors["grpo"], "clip_b": colors["clip_b"]}
    assert drop_lines == {"clip_b": colors["clip_b"]}  # only Clip_B logs clip_b/frac_dropped


def test_non_finite_tokens_of_a_dist_file_are_left_out(tmp_path):
    run_dir = tmp_path / "nan"
    (run_dir / "dist").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "entropy/mean": 1.0}\n')
    np.savez(
        run_dir / "dist" / "step-1.npz",
        discriminator=np.array([0.1, np.nan, 0.3, 0.2]),
        advantages=np.array([1.0, 1.0, np.inf, -1.0]),
    )
    run = load_run(run_dir)
    assert run.dist["discriminator"].tolist() == [0.1, 0.2]
    assert run.dist["advantages"].tolist() == [1.0, -1.0]
    assert "left out 2 token(s) with a non-finite value" in " ".join(run.notes)
