"""Training logs of other trainers, read into the report's per-step rows (docs/report.md).

Three sources, found by what a path holds:
- TRL (`GRPOTrainer`, with or without `EntropyDynamicsCallback` / `EntropyGRPOTrainer`): the
  `log_history` of `trainer_state.json` (in the output directory, or its latest
  `checkpoint-N/`), or the TensorBoard event files its `report_to="tensorboard"` writes
  (`runs/*/events.out.tfevents.*`, tags `train/<key>`).
- verl's tracker: its file logger's JSONL (`<project>/<experiment>.jsonl`, one
  `{"step": N, "data": {key: value}}` per line; `trainer.logger=[file]`) or its TensorBoard
  events (`tensorboard_log/<project>/<experiment>/`, tags `<key>`).
When several are present, the one reaching the latest step is read (a tie goes to the JSON).

Keys are renamed to the report's where the quantity is the same (`KEY_ALIASES`); every other
key is kept as logged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from entropy_dynamics.diagnostics import ENTROPY_MEAN, LOSS_CLIP_FRAC_HIGH, LOSS_CLIP_FRAC_LOW
from entropy_dynamics.report import keys

# trainer's key -> the report's key for the same quantity (used when the row lacks the latter)
KEY_ALIASES = {
    # TRL GRPOTrainer: token-mean entropy of the loss tokens, the mean total reward, and the
    # PPO clip fractions (A < 0, r < 1 - eps_low; A > 0, r > 1 + eps_high), as ours.
    "entropy": ENTROPY_MEAN,
    "reward": keys.REWARD,
    "clip_ratio/low_mean": LOSS_CLIP_FRAC_LOW,
    "clip_ratio/high_mean": LOSS_CLIP_FRAC_HIGH,
    # verl: the actor's token-mean entropy and the mean sequence score (the task reward
    # before any KL penalty).
    "actor/entropy": ENTROPY_MEAN,
    "critic/score/mean": keys.REWARD,
}
# Prefixes stripped from keys: TensorBoard tags of HF's TensorBoardCallback, and the namespace
# the verl adapter logs our metrics under.
_PREFIXES = ("train/", "entropy_dynamics/")
_EVENTS_GLOB = "events.out.tfevents.*"


def normalise(row: dict[str, Any]) -> dict[str, Any]:
    """A trainer's log row with the report's key names (`KEY_ALIASES`, `_PREFIXES`)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    for source, target in KEY_ALIASES.items():
        if source in out and target not in out:
            out[target] = out[source]
    return out


def _merge_by_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per integer step (later values win), in step order."""
    merged: dict[int, dict[str, Any]] = {}
    for row in rows:
        step = row.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            merged.setdefault(step, {"step": step}).update(row)
    return [merged[step] for step in sorted(merged)]


def _trainer_state_rows(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """TRL / HF `trainer_state.json`: its training rows (`eval_*` keys and summaries left out)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        notes.append(f"{path.name}: could not be read ({error})")
        return []
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        notes.append(f"{path.name}: has no log_history list")
        return []
    rows = []
    for entry in history:
        if not isinstance(entry, dict):
            continue
        row = {k: v for k, v in entry.items() if not k.startswith(("eval_", "train_"))}
        if set(row) - {"step", "epoch", "total_flos"}:
            rows.append(row)
    return rows


def _verl_jsonl_rows(path: Path, notes: list[str]) -> list[dict[str, Any]] | None:
    """verl's file logger: `{"step": N, "data": {...}}` per line; None if not that format."""
    rows, broken = [], 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        notes.append(f"{path.name}: could not be read ({error})")
        return None
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            broken += 1
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), dict):
            return None
        rows.append({**entry["data"], "step": entry.get("step")})
    if broken:
        notes.append(f"{path.name}: skipped {broken} line(s) that are not JSON objects")
    return rows if rows else None


def _tensorboard_rows(folder: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Scalars of every TensorBoard event file under `folder` (written by any SummaryWriter)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import (
            SCALARS,
            EventAccumulator,
        )
    except ImportError:
        notes.append(
            "TensorBoard event files found but the tensorboard package is missing: "
            "pip install 'entropy-dynamics[train]'"
        )
        return []
    rows: list[dict[str, Any]] = []
    for path in sorted(folder.rglob(_EVENTS_GLOB), key=lambda p: (p.stat().st_mtime, p.name)):
        events = EventAccumulator(str(path), size_guidance={SCALARS: 0})
        try:
            events.Reload()
        except Exception as error:  # a corrupt or truncated file must not stop the report
            notes.append(f"{path.name}: could not be read ({type(error).__name__}: {error})")
            continue
        for tag in events.Tags().get(SCALARS, []):
            if tag.startswith("eval/"):
                continue
            rows += [{"step": int(e.step), tag: float(e.value)} for e in events.Scalars(tag)]
    return rows


def _candidates(path: Path, notes: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(description, raw rows) of every log found at `path`, JSON sources first."""
    found: list[tuple[str, list[dict[str, Any]]]] = []
    if path.is_file():
        rows = _verl_jsonl_rows(path, notes) if path.suffix == ".jsonl" else None
        if rows is not None:
            found.append((f"verl's file logger ({path.name})", rows))
        return found
    states = [path / "trainer_state.json"]
    checkpoints = [p for p in path.glob("checkpoint-*/trainer_state.json")]
    checkpoints.sort(key=lambda p: int(p.parent.name.split("-")[-1] or 0))
    states += checkpoints[-1:]
    for state in states:
        if state.is_file():
            rel = state.relative_to(path)
            found.append((f"TRL's {rel} log_history", _trainer_state_rows(state, notes)))
    for jsonl in sorted(path.glob("*.jsonl")):
        rows = _verl_jsonl_rows(jsonl, notes)
        if rows is not None:
            found.append((f"verl's file logger ({jsonl.name})", rows))
    if next(path.rglob(_EVENTS_GLOB), None) is not None:
        found.append(("TensorBoard event files", _tensorboard_rows(path, notes)))
    return found


def read_external(path: Path) -> tuple[list[dict[str, Any]], list[str]] | None:
    """Per-step rows (report key names) from a TRL or verl log at `path`, and notes; None if
    `path` holds none of them."""
    notes: list[str] = []
    candidates = []
    for description, rows in _candidates(Path(path), notes):
        merged = _merge_by_step([normalise(row) for row in rows])
        if merged:
            candidates.append((merged[-1]["step"], -len(candidates), description, merged))
    if not candidates:
        return None
    _, _, description, rows = max(candidates, key=lambda c: (c[0], c[1]))
    notes.insert(0, f"read from {description}")
    if len(candidates) > 1:
        others = [c[2] for c in candidates if c[2] != description]
        notes.append(f"also present, not read: {', '.join(others)}")
    return rows, notes
