"""The fused chunk kernels of `_token_stats_kernels` under `torch.compile`, and when to use them.

`torch.compile` (inductor) turns `fused_chunk_sums` and `fused_chunk_grad` into one C++ loop per
row (Triton on CUDA): the logits are read, `exp` is taken once per logit and the four row sums
stay in registers, where the eager chunk code runs a dozen separate ops over `[c, V]` buffers.
Each function is compiled once per process and input dtype (`dynamic=True` and size-oblivious
sizes: every chunk shape, 1-row chunks included, shares one graph); inductor's FX-graph cache (`TORCHINDUCTOR_CACHE_DIR`, default
`/tmp/torchinductor_$USER`) keeps the generated code across processes, so only a machine's first
compile pays for the C++ build. A compiled kernel holds the GIL while it runs, so `run_chunks`'
worker threads cannot share its work: each kernel splits its rows over torch's threads
(OpenMP), reading the thread count at run time (`cpp.dynamic_threads`, one graph for any count).

`ENTROPY_DYNAMICS_COMPILE` selects the policy of `backend="auto"` on CPU: unset or `auto`
compiles passes of at least `COMPILE_MIN_ELEMENTS` logits (below that the one-time compile
outweighs the gain) when torch runs one thread (OpenMP inside the kernels stalls on a busy
machine, where the eager worker threads do not), `1` compiles every pass, `0` never compiles. Where inductor cannot compile
(no C++ compiler, an unsupported Python), `auto` warns once and keeps today's eager chunks.
Measured figures: docs/performance.md.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ._dtypes import compute_dtype
from ._token_stats_kernels import fused_chunk_grad, fused_chunk_sums

ENV = "ENTROPY_DYNAMICS_COMPILE"
POLICIES = ("0", "1", "auto")
# Below 16 M logits per pass the one-time compile of a process outweighs the gain within tens of
# calls (docs/performance.md has the timings).
COMPILE_MIN_ELEMENTS = 1 << 24
# The compiled loop needs no work buffers and each call costs tens of microseconds, so its
# chunks are larger than the eager ones: about 1 M logits (6 rows at V = 151936).
COMPILED_CHUNK_ELEMENTS = 1 << 20


def policy() -> str:
    """`ENTROPY_DYNAMICS_COMPILE`: `"0"`, `"1"` or `"auto"` (unset or empty)."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in POLICIES:
        raise ValueError(
            f"{ENV} must be 0 (never compile token_stats' CPU chunks), 1 (always) or auto "
            f"(passes of at least {COMPILE_MIN_ELEMENTS} logits), got {os.environ[ENV]!r}"
        )
    return value


class FusedKernels:
    """The two compiled chunk functions, built lazily; `ready(dtype)` says whether they run.

    The first use for a dtype runs both functions on small inputs in the calling thread (rows
    2 and 1), so a compile failure shows before a pass starts and worker threads never compile.
    After a failure every later `ready` is False and `failure` holds the reason.
    """

    def __init__(self) -> None:
        self.failure: str | None = None
        self._warm: set[tuple[torch.dtype, torch.device]] = set()
        self._lock = threading.Lock()
        self._sums: Callable[..., Tensor] | None = None
        self._grad: Callable[..., Tensor] | None = None
        self._scalars: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}

    def ready(self, dtype: torch.dtype, device: torch.device, *, warn: bool) -> bool:
        if (dtype, device) in self._warm:
            return True
        with self._lock:
            if self.failure is None and (dtype, device) not in self._warm:
                try:
                    self._warm_up(dtype, device)
                except Exception as err:  # inductor raises many types; the cause is in the text
                    self.failure = f"{type(err).__name__}: {str(err).strip()[:400]}"
                    if warn:
                        warnings.warn(
                            "entropy_dynamics.token_stats: torch.compile cannot build the fused "
                            f"CPU kernels ({self.failure}); using the eager chunks (same "
                            f"results, about twice as slow). Set {ENV}=0 to skip the attempt.",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                else:
                    self._warm.add((dtype, device))
        return (dtype, device) in self._warm

    def _warm_up(self, dtype: torch.dtype, device: torch.device) -> None:
        if self._sums is None:
            # Read the thread count when the kernel runs, not when it is compiled.
            options = {"cpp.dynamic_threads": True} if device.type == "cpu" else None
            self._sums = torch.compile(fused_chunk_sums, dynamic=True, options=options)
            self._grad = torch.compile(fused_chunk_grad, dynamic=True, options=options)
        # Dynamo specialises a dimension of size 1 unless told that sizes are "oblivious";
        # then a 1-row chunk reuses the graph instead of compiling its own.
        try:
            from torch.fx.experimental import _config as fx_config

            oblivious = fx_config.patch(backed_size_oblivious=True)
            shapes = (2,)
        except (ImportError, AttributeError):  # another torch: compile the 1-row graph too
            oblivious, shapes = contextlib.nullcontext(), (2, 1)
        with oblivious:
            for rows in shapes:
                z = torch.linspace(-3.0, 3.0, rows * 4096, device=device).view(rows, 4096)
                z = z.to(dtype)
                sums = self.sums(z, 1.0)
                m, s = sums[0], sums[1]
                self.grad(z, m, torch.log(s), -m, m, 1.0, torch.empty_like(z, dtype=m.dtype))

    def scalar(self, value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A cached 0-dim tensor: a Python float would be a constant in the compiled graph."""
        key = (value, dtype, device)
        if key not in self._scalars:
            self._scalars[key] = torch.tensor(value, dtype=dtype, device=device)
        return self._scalars[key]

    def sums(self, z: Tensor, inv_tau: float) -> Tensor:
        """`fused_chunk_sums` compiled: `[5, c]` in the compute dtype."""
        cdtype = compute_dtype(z.dtype)
        with torch.no_grad():  # grad mode is a guard: keep one graph for every caller
            return self._sums(z, self.scalar(inv_tau, cdtype, z.device))

    def grad(self, z, m, log_s, coef_x, coef_const, inv_tau: float, out: Tensor) -> None:
        """`fused_chunk_grad` compiled: writes into `out [c, V]` (compute dtype)."""
        tau = self.scalar(inv_tau, m.dtype, z.device)
        with torch.no_grad():
            self._grad(z, m, log_s, coef_x, coef_const, tau, out)


FUSED = FusedKernels()
