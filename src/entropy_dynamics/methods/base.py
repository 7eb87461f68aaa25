"""The data a method reads (TokenBatch), what it decides per batch (Plan), and the part interfaces."""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = [
    "DENOMINATORS",
    "KEPT",
    "VALID",
    "Advantage",
    "Filter",
    "LossContext",
    "Part",
    "Plan",
    "PlanContext",
    "Regulariser",
    "Reweight",
    "Surrogate",
    "TokenBatch",
]

KEPT, VALID = "kept", "valid"
# A filter's ``denominator``: "kept" = a dropped token leaves the loss mask (and every
# denominator), as the Clip_B / Clip_V / 80-20 authors' code does; "valid" = only its policy-
# gradient term is zeroed and it stays in the loss mask and the denominators (regularisers still
# act on it), as verl's Clip-Cov and TRL's top_entropy_quantile do.
DENOMINATORS = (KEPT, VALID)

_REQUIRED = ("advantages", "logprobs", "old_logprobs", "entropy", "discriminator")
_OPTIONAL = ("baseline", "ref_logprobs")


@dataclass(frozen=True)
class TokenBatch:
    """What a method may read for one TRAINING batch; every field is ``[B, T]``.

    ``mask`` (bool) marks valid response tokens; ``advantages`` are broadcast per token;
    ``logprobs`` are the current policy's (detached), ``old_logprobs`` the sampler's;
    ``entropy`` is H, ``discriminator`` is S_* = p_k (H + log p_k), ``baseline`` is
    N = sum_i p_i^2 (H + log p_i) (only Clip_V and the lens need it), ``ref_logprobs`` are a
    reference policy's (only ``kl_ref`` needs them). Values at padding are never read.
    """

    mask: Tensor
    advantages: Tensor
    logprobs: Tensor
    old_logprobs: Tensor
    entropy: Tensor
    discriminator: Tensor
    baseline: Tensor | None = None
    ref_logprobs: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mask, Tensor) or self.mask.dtype != torch.bool:
            raise ValueError("TokenBatch.mask must be a bool tensor [B, T] (True = valid token)")
        if self.mask.dim() != 2:
            raise ValueError(f"TokenBatch.mask must be [B, T], got shape {tuple(self.mask.shape)}")
        for name in _REQUIRED + _OPTIONAL:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not isinstance(value, Tensor) or value.shape != self.mask.shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"TokenBatch.{name} must be a tensor of the mask's shape "
                    f"{tuple(self.mask.shape)}, got {got}"
                )

    def rows(self, index: Any) -> TokenBatch:
        """The batch restricted to rows ``index`` (a slice or an index tensor)."""
        return TokenBatch(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                for f in dataclasses.fields(self)
            }
        )


@dataclass(frozen=True)
class Plan:
    """What a method decided once per training batch (batch-global), applied per micro-batch.

    ``keep``: bool ``[B, T]`` = mask & the keep mask of every filter with ``denominator="kept"``.
    ``weight``: float ``[B, T]``, the product of the reweights (1 where none), 0 on the tokens
    that a ``denominator="valid"`` filter drops. ``selected``: bool ``[B, T]`` per regulariser
    name, the tokens it touches (e.g. ``kl_cov``). ``metrics``: 0-dim tensors, batch-global.
    ``num_tokens``: global count of kept tokens (the token-mean denominator; tokens dropped by
    a ``denominator="kept"`` filter leave it). ``num_seqs``: global count of sequences with at least one kept token.
    """

    keep: Tensor
    weight: Tensor
    selected: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)
    num_tokens: Tensor = field(default_factory=lambda: torch.tensor(0))
    num_seqs: Tensor = field(default_factory=lambda: torch.tensor(0))

    def rows(self, index: Any) -> Plan:
        """The micro-batch's rows; the global counts and metrics are kept as they are."""
        return Plan(
            keep=self.keep[index],
            weight=self.weight[index],
            selected={name: sel[index] for name, sel in self.selected.items()},
            metrics=self.metrics,
            num_tokens=self.num_tokens,
            num_seqs=self.num_seqs,
        )


@dataclass(frozen=True)
class PlanContext:
    """What a filter's ``keep`` and a regulariser's ``select`` receive, once per training batch.

    ``batch``: the TokenBatch. ``clipped``: bool ``[B, T]``, the tokens the method's surrogate
    clips at ``r = exp(logp - old_logp)``, only for a filter that declares ``needs_clipped``
    (Clip-Cov), else None. ``group``: the process group of the batch-global statistics (None:
    the default group, or one process). ``state``: the part's own state (``init_state``), only
    for a stateful part, else None. ``batch.baseline`` (N) is there when some part declares
    ``needs_baseline``.
    """

    batch: TokenBatch
    clipped: Tensor | None = None
    group: Any = None
    state: dict[str, Tensor] | None = None


@dataclass(frozen=True)
class LossContext:
    """What a regulariser's ``token_loss`` receives for one micro-batch; every tensor ``[b, T]``.

    ``logprobs`` carry the gradient; ``old_logprobs`` and ``advantages`` as in the TokenBatch;
    ``plan``: the micro-batch's rows of the plan (its ``metrics`` hold the batch constants);
    ``selected``: this regulariser's tokens from ``select`` (None when it chose none).
    Declared needs only, else None: ``entropy`` (H with gradient, ``needs_entropy``),
    ``ref_logprobs`` (``needs_ref_logprobs``), ``clamped_entropy`` (with gradient, a part with
    a ``clamp_p`` field: ``Method.clamp_p``).
    """

    logprobs: Tensor
    old_logprobs: Tensor
    advantages: Tensor
    plan: Plan
    selected: Tensor | None = None
    entropy: Tensor | None = None
    ref_logprobs: Tensor | None = None
    clamped_entropy: Tensor | None = None


class Part:
    """A registered building block; its dataclass fields are its hyperparameters.

    Subclasses are dataclasses with every hyperparameter keyword-only and defaulted; ``name``
    is the registry key and ``kind`` one of surrogate / filter / regulariser / reweight.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    needs_baseline: ClassVar[bool] = False

    def init_state(self) -> dict[str, Tensor]:
        """This part's state before the first step, as named tensors; ``{}`` when stateless.

        State is explicit, as in optax: a stateful part never mutates itself; the method passes
        its state in (``state=``) and takes the new state back (``Filter.keep`` returns it as
        a third value, ``Regulariser.next_state`` after the step). Tensors only, so a checkpoint
        loads with ``torch.load(weights_only=True)``.
        """
        return {}

    def params(self) -> dict[str, Any]:
        """Hyperparameters as a dict (declaration order); the part's spec arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @property
    def spec(self) -> str:
        """Canonical spec term, e.g. ``clip_b(mu=2.5, variant='released')`` (None args left out)."""
        args = ", ".join(
            f"{key}={value!r}" for key, value in self.params().items() if value is not None
        )
        return f"{self.name}({args})" if args else self.name


class Surrogate(Part, abc.ABC):
    """Per-token policy-gradient loss: ``loss(logprobs, old_logprobs, advantages)``."""

    kind: ClassVar[str] = "surrogate"

    @abc.abstractmethod
    def loss(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-token loss ``[B, T]`` and diagnostics (``ratio``, bool clip masks), all ``[B, T]``."""
        ...

    def clipped(self, ratio: Tensor, advantages: Tensor) -> Tensor:
        """Bool ``[B, T]``: tokens whose ratio clip is active (their PPO gradient is cut)."""
        return torch.zeros_like(ratio, dtype=torch.bool)

    def select(self, batch: TokenBatch, *, group=None) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Tokens this surrogate treats apart, decided once per batch (None: none, the default).

        A surrogate whose rule is per token (Archer's two clip ranges) returns a bool ``[B, T]``:
        ``Method.plan`` stores it as ``plan.selected[name]`` and passes it back as
        ``selected=`` to ``loss`` and ``clipped``; the metrics join ``plan.metrics``.
        """
        return None, {}


class Filter(Part, abc.ABC):
    """Decides a bool KEEP mask ``[B, T]`` once per batch from batch-global statistics.

    A filter with a ``denominator`` field set to ``"valid"`` does not remove its dropped tokens
    from ``Plan.keep``: ``Method.plan`` zeroes their surrogate weight instead (``DENOMINATORS``).
    """

    kind: ClassVar[str] = "filter"
    needs_clipped: ClassVar[bool] = False  # reads PlanContext.clipped (Clip-Cov)

    @abc.abstractmethod
    def keep(self, ctx: PlanContext) -> tuple[Tensor, dict[str, Tensor]]:
        """KEEP mask (a subset of ``ctx.batch.mask``) and batch-global metrics.

        A stateful filter (``init_state()`` not empty) reads ``ctx.state`` and returns
        ``(keep, metrics, new_state)``.
        """
        ...


class Regulariser(Part, abc.ABC):
    """Adds a per-token term to the loss; may choose its tokens once per batch (``select``)."""

    kind: ClassVar[str] = "regulariser"
    needs_entropy: ClassVar[bool] = False
    needs_ref_logprobs: ClassVar[bool] = False
    # names of the plan metrics token_loss reads (batch constants an adapter must carry)
    constants: ClassVar[tuple[str, ...]] = ()

    def select(self, ctx: PlanContext) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Bool ``[B, T]`` of the tokens this regulariser touches (None = every valid token).

        The metrics returned become ``plan.metrics``: batch constants the term reads in
        ``token_loss`` (a coefficient) live there, logged once per batch. A stateful
        regulariser reads ``ctx.state``.
        """
        return None, {}

    @abc.abstractmethod
    def token_loss(self, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-token term ``[b, T]`` added to the loss, and its metrics as raw sums over the
        micro-batch's kept tokens (``finalize_metrics`` turns the summed values into means).
        ``ctx`` carries what the part declared (``needs_entropy``, ``needs_ref_logprobs``,
        ``clamp_p``) besides the log-probs, advantages, plan and its selected tokens.
        """
        ...

    def next_state(self, state: dict[str, Tensor], metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """The state after an optimiser step, from the step's logged ``metrics``.

        Only stateful parts (``init_state()`` not empty) are called; they receive their state
        and return the new one.
        """
        raise TypeError(
            f"{self.name} is stateless: Method.step_end calls next_state only on stateful parts"
        )


class Advantage(Part, abc.ABC):
    """The outcome-advantage estimator a method's paper prescribes (e.g. W-REINFORCE's).

    A method has at most one; without one, the caller's estimator (``advantages.get``) is used.
    ``advantages(rewards [B], group_size) -> [B]``, computed before the ``TokenBatch``.
    """

    kind: ClassVar[str] = "advantage"

    @abc.abstractmethod
    def advantages(self, rewards: Tensor, group_size: int) -> Tensor:
        """One advantage per response, ``[B]``."""
        ...


class Reweight(Part, abc.ABC):
    """Multiplies the surrogate's per-token loss by a weight ``[B, T]`` decided per batch."""

    kind: ClassVar[str] = "reweight"

    @abc.abstractmethod
    def weight(self, batch: TokenBatch) -> Tensor:
        """Float ``[B, T]`` weights."""
        ...
