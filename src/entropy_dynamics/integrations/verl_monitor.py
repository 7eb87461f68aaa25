"""verl's monitor-only mode: verl's own loss trains, the entropy-dynamics metrics are logged.

    bash examples/verl/run.sh monitor          # entropy_dynamics.mode: monitor (docs/verl.md)

The counterpart of the TRL callback (`integrations/trl_monitor.py`), set in the config:
- ``entropy_dynamics.mode``: ``train`` (default: the method trains, `verl_loss.method_loss`) or
  ``monitor``: nothing reaches verl's loss (no `set_loss_fn`, `response_mask` untouched, our
  fields taken off the batch before the update), so the weights are those verl alone gives;
- ``entropy_dynamics.method`` (monitor: optional): the filters whose drops are logged as what
  they WOULD drop (`clip_b/frac_dropped`, ...), e.g. ``clip_b + clip_v``;
- ``entropy_dynamics.probe_steps`` (monitor; 0 = never) and ``probe_rows``: every N steps the
  actor engine measures the entropy change of the step's first optimiser step on that many rows
  of its first mini-batch (`verl_engine.EntropyFSDPEngine.train_batch`).
Each step logs `verl_plan.observe_batch`'s metrics (H, S_*, N, S_* - N, the drop fractions);
probe steps add `entropy/measured_delta`, `entropy/pred_delta`, `entropy/pred_delta_logit`,
`probe/*`, all as ``entropy_dynamics/<name>`` in verl's tracker.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from entropy_dynamics import diagnostics as dg
from entropy_dynamics import methods

from .verl_engine import PROBE_PREFIX, PROBE_ROWS_KEY, PROBE_STEP_KEY

__all__ = ["MODES", "PROBE_NAMES", "Settings", "check_monitor_method", "lift_probe_metrics"]

MODES = ("train", "monitor")
PROBE_NAMES = (  # what `train.probe.entropy_probe` returns
    dg.ENTROPY_MEASURED_DELTA,
    dg.PRED_DELTA,
    dg.ENTROPY_PRED_DELTA_LOGIT,
    dg.PROBE_CORR_PRED,
    dg.PROBE_CORR_PRED_LOGIT,
    dg.PROBE_SIGN_AGREE,
)
_ACTOR_PREFIX = "actor/"  # verl's trainers rename the worker's metrics actor/<name>


_DEFAULT_PROBE_ROWS = 4
_SECTION_KEYS = {"name", "method", "mode", "probe_steps", "probe_rows"}


@dataclass(frozen=True)
class Settings:
    """The ``entropy_dynamics`` keys besides the method (module docstring)."""

    mode: str = "train"  # train: the method's loss; monitor: verl's loss, metrics only
    probe_steps: int = 0  # monitor: probe every N steps (global_steps % N == 0); 0: never
    probe_rows: int = _DEFAULT_PROBE_ROWS  # rows of the first mini-batch (per rank) probed; 2 x rows x T x V logits

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"entropy_dynamics.mode={self.mode!r}: choose one of {list(MODES)}")
        for name, low in (("probe_steps", 0), ("probe_rows", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"entropy_dynamics.{name} must be an int >= {low}, got {value!r}")
        if self.mode == "train" and self.probe_steps:
            raise ValueError(
                "entropy_dynamics.probe_steps is an option of entropy_dynamics.mode=monitor; "
                "in train mode the plan logs entropy/pred_delta every step"
            )
        if not self.probe_steps and self.probe_rows != _DEFAULT_PROBE_ROWS:
            raise ValueError(
                f"entropy_dynamics.probe_rows={self.probe_rows} has no effect without "
                "entropy_dynamics.probe_steps > 0 (mode=monitor)"
            )

    @classmethod
    def from_config(cls, config) -> Settings:
        """The settings in ``config.entropy_dynamics``; an unknown key there is refused."""
        section = OmegaConf.select(config, "entropy_dynamics", default=None) or {}
        unknown = set(section) - _SECTION_KEYS
        if unknown:
            raise ValueError(
                f"entropy_dynamics: unknown keys {sorted(unknown)}; valid: {sorted(_SECTION_KEYS)}"
            )
        fields = ("mode", "probe_steps", "probe_rows")
        return cls(**{key: section[key] for key in fields if section.get(key) is not None})

    @property
    def monitor(self) -> bool:
        return self.mode == "monitor"

    def probe_flags(self, step: int) -> dict[str, int]:
        """The non-tensor fields that ask the actor engine to probe ``step`` (none: no probe)."""
        if not self.monitor or not self.probe_steps or step % self.probe_steps:
            return {}
        return {PROBE_STEP_KEY: int(step), PROBE_ROWS_KEY: self.probe_rows}


def check_monitor_method(method: methods.Method) -> None:
    """Monitor mode reports what a method's filters would drop; refuse parts it would ignore."""
    ignored = [part.name for part in (*method.regularisers, *method.reweights)]
    if method.advantage is not None:
        ignored.append(method.advantage.name)
    if ignored:
        raise ValueError(
            f"entropy_dynamics.mode=monitor: {method.spec} has {ignored}, which monitor mode "
            "would not apply or report (verl's own loss and advantages train); keep only its "
            "filters (e.g. 'clip_b + clip_v'), or use entropy_dynamics.mode=train"
        )


def lift_probe_metrics(metrics: dict, *, probed: bool) -> dict:
    """Rename the probe's ``actor/entropy_dynamics/<name>`` to ``entropy_dynamics/<name>``
    in place; a probed step that returned none means the workers run verl's own engine."""
    found = False
    for name in PROBE_NAMES:
        value = metrics.pop(_ACTOR_PREFIX + PROBE_PREFIX + name, None)
        if value is not None:
            metrics[PROBE_PREFIX + name] = value
            found = True
    if probed and not found:
        raise ValueError(
            "entropy_dynamics.probe_steps: the actor update returned no probe metrics; run the "
            "workers with VERL_ENGINE_VENDOR=entropy_dynamics (verl_engine.EntropyFSDPEngine)"
        )
    return metrics
