"""Writing the report: figures to PNG, a comparison table, report.md and a self-contained report.html."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

from entropy_dynamics.report import keys
from entropy_dynamics.report.distributions import draw_discriminator, draw_pass_rate_hist
from entropy_dynamics.report.figures import (
    FigureSpec,
    draw_at_k,
    draw_drop_fractions,
    draw_entropy,
    draw_prediction,
    draw_reward_accuracy,
)
from entropy_dynamics.report.plotting import STYLE, run_colors
from entropy_dynamics.report.runs import RunRecord, load_runs

FIGURES = (
    FigureSpec(
        "entropy.png",
        "Entropy per step",
        "Token-mean entropy of the sampled responses "
        "at each training step, under the policy before the update.",
        draw_entropy,
    ),
    FigureSpec(
        "reward_accuracy.png",
        "Reward and held-out accuracy",
        "Left: mean training "
        "reward per step. Right: held-out greedy accuracy (solid) and avg@k at the largest "
        "k (dashed) at each evaluation.",
        draw_reward_accuracy,
    ),
    FigureSpec(
        "at_k.png",
        "avg@k and pass@k",
        "avg@k (mean accuracy of k samples) and unbiased "
        "pass@k against k, from each run's last evaluation. avg@k estimates the same "
        "per-sample accuracy for every k, so its lines are flat; pass@k rises with k, and "
        "faster for a policy that keeps more diverse answers.",
        draw_at_k,
    ),
    FigureSpec(
        "entropy_prediction.png",
        "Predicted vs measured entropy change",
        "At each probe "
        "step: the first-order predictions of the batch-mean entropy change against the "
        "change measured at the same positions after the update. Points on the dashed "
        "line are predicted exactly.",
        draw_prediction,
    ),
    FigureSpec(
        "discriminator.png",
        "S* split by advantage sign",
        "Distribution of the entropy "
        "discriminator S* (and of S* − N) over the tokens of the latest saved batch, for "
        "tokens with positive and negative advantage.",
        draw_discriminator,
    ),
    FigureSpec(
        "drop_fractions.png",
        "Tokens dropped or clipped",
        "Fraction of valid response "
        "tokens removed from the policy-gradient loss by each filter, per step.",
        draw_drop_fractions,
    ),
    FigureSpec(
        "pass_rate_hist.png",
        "Pass-rate histogram",
        "Share of held-out prompts with c of the n samples correct, at the last evaluation.",
        draw_pass_rate_hist,
    ),
)

# (column key, header) of the comparison table, in order.
_COLUMNS = (
    ("name", "run"),
    ("method", "method"),
    ("seed", "seed"),
    ("steps", "steps"),
    ("entropy_start", "entropy, first step (nats)"),
    ("entropy", "entropy, last step (nats)"),
    ("reward", "reward, last step"),
    ("eval_step", "eval step"),
    ("greedy_acc", "greedy acc"),
    ("avg@k", "avg@k"),
    ("pass@k", "pass@k"),
    ("k", "k"),
)


def _last_evaluations(run: RunRecord) -> list[dict[str, Any]]:
    """The records of the run's last evaluated step (one per k, e.g. the trainer's k=8 and a
    later `eval --k 16`)."""
    if not run.evals:
        return []
    step = max(e["step"] for e in run.evals)
    return [e for e in run.evals if e["step"] == step]


def common_k(runs: list[RunRecord]) -> int | None:
    """The largest k whose pass@k every evaluated run's last evaluation has, or None.

    pass@k from n >= k samples is an unbiased estimate of the same quantity whatever n, so a
    run evaluated with 16 samples still gives pass@8 beside another run's 8-sample pass@8.
    """
    shared = None
    for run in runs:
        records = _last_evaluations(run)
        if not records:
            continue
        ks = set().union(*(set(e["pass@k"]) | set(e["avg@k"]) for e in records))
        shared = ks if shared is None else shared & ks
    return max(shared) if shared else None


def _summary_row(run: RunRecord, k: int | None) -> dict[str, Any]:
    first_entropy = next((row[keys.ENTROPY] for row in run.metrics if keys.ENTROPY in row), None)
    row: dict[str, Any] = {
        "name": run.name,
        "method": run.method,
        "seed": run.seed,
        "steps": run.metrics[-1]["step"] if run.metrics else None,
        "entropy_start": first_entropy,
        "entropy": run.last(keys.ENTROPY),
        "reward": run.last(keys.REWARD),
        "eval_step": None,
        "greedy_acc": None,
        "avg@k": None,
        "pass@k": None,
        "k": None,
    }
    records = _last_evaluations(run)
    if not records:
        return row
    own = lambda e: set(e["avg@k"]) | set(e["pass@k"])  # noqa: E731
    with_k = [e for e in records if k in own(e)] if k is not None else []
    # at the shared k the record with the most samples (lowest variance); else the largest k
    pick = max(with_k or records, key=lambda e: (e.get("k", 0), max(own(e), default=0)))
    row["eval_step"] = pick["step"]
    row["greedy_acc"] = pick.get("greedy_acc")
    shown = k if with_k else max(own(pick), default=None)
    if shown is not None:
        row.update({"k": shown, "avg@k": pick["avg@k"].get(shown),
                    "pass@k": pick["pass@k"].get(shown)})  # fmt: skip
    return row


def _summary_rows(runs: list[RunRecord]) -> list[dict[str, Any]]:
    k = common_k(runs)
    return [_summary_row(run, k) for run in runs]


def summary_table(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """One dict per run: name, method, seed, steps, entropy_start, entropy, reward, eval_step,
    greedy_acc, avg@k, pass@k, k.

    `entropy` and `reward` are the values of the last training step that logged them
    (`entropy_start` the first); `greedy_acc`, `avg@k`, `pass@k` come from the last evaluated
    step, at one k for all runs: `common_k`, the largest k every run has there (like with like:
    never one run's pass@16 beside another's pass@8). Only when the runs share no k does each
    row show its own largest k (the `k` column says which). Missing values are None.
    """
    return _summary_rows(load_runs(run_dirs))


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class _Section:
    spec: FigureSpec
    image: Path | None  # None when skipped
    notes: list[str]


def _render_figures(runs: list[RunRecord], figure_dir: Path) -> list[_Section]:
    colors = run_colors([run.name for run in runs])
    sections = []
    for spec in FIGURES:
        target = figure_dir / spec.filename
        target.unlink(missing_ok=True)  # never leave a stale figure from an earlier report
        with matplotlib.rc_context(STYLE):
            fig, notes = spec.draw(runs, colors)
            if fig is not None:
                fig.savefig(target, format="png")
        sections.append(_Section(spec, target if fig is not None else None, notes))
    return sections


def _markdown(title: str, runs: list[RunRecord], rows: list[dict], sections: list[_Section]) -> str:
    lines = [
        f"# {title}",
        "",
        "Runs: " + ", ".join(f"`{run.path}`" for run in runs),
        "",
        "| " + " | ".join(header for _, header in _COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for row in rows:
        cells = [_cell(row[key]).replace("|", "\\|") for key, _ in _COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    for section in sections:
        lines += ["", f"## {section.spec.title}", ""]
        if section.image is None:
            lines.append("*Skipped: nothing to draw.*")
        else:
            lines += [
                f"![{section.spec.title}](figures/{section.image.name})",
                "",
                section.spec.caption,
            ]
        lines += [f"- Note: {note}" for note in section.notes]
    run_notes = [(run.name, note) for run in runs for note in run.notes]
    if run_notes:
        lines += ["", "## Notes from reading the runs", ""]
        lines += [f"- {name}: {note}" for name, note in run_notes]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, td:nth-child(2) { text-align: left; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #666; font-size: 0.9em; } code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _html(title: str, runs: list[RunRecord], rows: list[dict], sections: list[_Section]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p>Runs: " + ", ".join(f"<code>{esc(str(run.path))}</code>" for run in runs) + "</p>",
        "<table><thead><tr>"
        + "".join(f"<th>{esc(h)}</th>" for _, h in _COLUMNS)
        + "</tr></thead><tbody>",
    ]
    for row in rows:
        parts.append(
            "<tr>" + "".join(f"<td>{esc(_cell(row[k]))}</td>" for k, _ in _COLUMNS) + "</tr>"
        )
    parts.append("</tbody></table>")
    for section in sections:
        parts.append(f"<h2>{esc(section.spec.title)}</h2>")
        if section.image is None:
            parts.append('<p class="note"><em>Skipped: nothing to draw.</em></p>')
        else:
            data = base64.b64encode(section.image.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{esc(section.spec.title)}" '
                f'src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(section.spec.caption)}</figcaption></figure>"
            )
        parts += [f'<p class="note">Note: {esc(note)}</p>' for note in section.notes]
    run_notes = [(run.name, note) for run in runs for note in run.notes]
    if run_notes:
        parts.append("<h2>Notes from reading the runs</h2><ul>")
        parts += [f"<li>{esc(name)}: {esc(note)}</li>" for name, note in run_notes]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dirs: list[Path], out_dir: Path, *, title: str | None = None) -> Path:
    """Write `out_dir/report.md`, `out_dir/report.html` and `out_dir/figures/*.png`; return the md path.

    Reads each run directory (schema in docs/report.md), draws every figure it has data for
    (skipping the rest with a note), and writes a table comparing the runs (`summary_table`).
    The HTML embeds every figure as base64 PNG and references nothing outside itself.
    """
    runs = load_runs(run_dirs)
    out_dir = Path(out_dir)
    figure_dir = out_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    title = title or "Entropy dynamics: " + ", ".join(run.name for run in runs)
    sections = _render_figures(runs, figure_dir)
    rows = _summary_rows(runs)
    md_path = out_dir / "report.md"
    md_path.write_text(_markdown(title, runs, rows, sections), encoding="utf-8")
    (out_dir / "report.html").write_text(_html(title, runs, rows, sections), encoding="utf-8")
    return md_path
