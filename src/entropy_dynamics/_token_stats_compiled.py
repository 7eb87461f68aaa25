"""The fused kernels of `_token_stats_kernels` under `torch.compile`, and when to use them.

`torch.compile` (inductor) turns `block_sums` and `fused_chunk_grad` into C++ loops (Triton on
CUDA) that read the logits, take `exp` once per logit and keep the four sums in registers,
where the eager chunk code runs a dozen separate ops over `[c, V]` buffers. The forward
reduces each row in blocks of `BLOCK_COLUMNS` (the block's max, then its sums, while the
block is in L1; no cascade summation) and a last block of 1 to `BLOCK_COLUMNS` columns, then
combines the blocks (`combine_blocks`). So the compiled calls take many rows at once
(`COMPILED_CHUNK_ELEMENTS`) and need no work buffers.

The functions are compiled once per process, input dtype and torch thread count (dynamo
guards on the count), before the first pass, into the five graphs that serve every chunk shape (`dynamic=True`, size-oblivious sizes, inputs without
a view's base: see `FusedKernels._warm_up`); inductor's FX-graph cache
(`TORCHINDUCTOR_CACHE_DIR`, default `/tmp/torchinductor_$USER`) keeps the generated code across
processes, so only a machine's first compile pays for the C++ build. A compiled kernel holds
the GIL while it runs, so `run_chunks`' worker threads cannot share its work: each kernel
splits its rows over torch's threads (OpenMP; `cpp.dynamic_threads` reads the count at run
time, as measured in docs/performance.md).

`ENTROPY_DYNAMICS_COMPILE` selects the policy of `backend="auto"` on CPU: unset or `auto`
compiles passes of at least `COMPILE_MIN_ELEMENTS` logits (below that the one-time compile
outweighs the gain), `1` compiles every pass, `0` never compiles. Where inductor cannot compile
(no C++ compiler, an unsupported Python), `auto` warns once and keeps the eager chunks.
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
from ._token_stats_kernels import (
    BLOCK_COLUMNS,
    block_sums,
    combine_blocks,
    fused_chunk_grad,
    fused_main_sums,
)

ENV = "ENTROPY_DYNAMICS_COMPILE"
POLICIES = ("0", "1", "auto")
# Below 16 M logits per pass the one-time compile of a process outweighs the gain within tens of
# calls (docs/performance.md has the timings).
COMPILE_MIN_ELEMENTS = 1 << 24
# The compiled loops need no work buffers and read each block from L1 whatever the chunk, so
# a chunk is as large as a logits block from hidden states: 64 M logits, 441 rows at V = 151936
# (fewer calls, and fewer OpenMP fork-joins with several threads).
COMPILED_CHUNK_ELEMENTS = 1 << 26


def policy() -> str:
    """`ENTROPY_DYNAMICS_COMPILE`: `"0"`, `"1"` or `"auto"` (unset or empty)."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in POLICIES:
        raise ValueError(
            f"{ENV} must be 0 (never compile token_stats' CPU chunks), 1 (always) or auto "
            f"(passes of at least {COMPILE_MIN_ELEMENTS} logits), got {os.environ[ENV]!r}"
        )
    return value


def _size_oblivious_config():
    """The fx config of this torch if it has `backed_size_oblivious`, else None.

    Dynamo specialises sizes of 0 and 1: a 1-row chunk would compile a graph of its own in
    the middle of a pass. Compiled with sizes treated as "oblivious" (assumed >= 2 where a
    guard would ask), most graphs serve a 1-row chunk too; the warm-up compiles the rest.
    """
    try:
        from torch.fx.experimental import _config as fx_config
    except ImportError:
        return None
    return fx_config if hasattr(fx_config, "backed_size_oblivious") else None


_FX_CONFIG = _size_oblivious_config()


def _compiling(device: torch.device) -> contextlib.ExitStack:
    """The one state every compiled call runs in, whatever the caller's: no grad, no inference
    mode, no autocast (dynamo guards on each, so a caller's `inference_mode` or `autocast`
    would compile new graphs mid-pass; autocast would also change the dtype of the sums), and
    oblivious sizes."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.no_grad())
    stack.enter_context(torch.autocast(device.type, enabled=False))
    if _FX_CONFIG is not None:
        stack.enter_context(_FX_CONFIG.patch(backed_size_oblivious=True))
    return stack


def _plain(tensor: Tensor) -> Tensor:
    """`tensor`'s elements as a tensor that is no view and needs no grad: dynamo guards on a
    view's base and on `requires_grad`, each a graph of its own."""
    plain = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return plain.set_(
        tensor.untyped_storage(), tensor.storage_offset(), tensor.shape, tensor.stride()
    )


class FusedKernels:
    """The compiled functions, built lazily; `ready(dtype)` says whether they run.

    `_sums` is `block_sums` of 2-D rows (a chunk's last 1 to `BLOCK_COLUMNS` columns, or the
    blocks of one row as `[nb, BLOCK_COLUMNS]`), `_main` is `fused_main_sums` (2 or more rows
    of 2 or more whole blocks), `_grad` is `fused_chunk_grad`. The first use for a dtype (and thread count) runs
    them on small inputs in the calling thread, so a compile failure shows before a pass
    starts. After a failure every later `ready` is False and `failure` says why.
    """

    def __init__(self) -> None:
        self.failure: str | None = None
        self._warm: set[tuple[torch.dtype, torch.device, int]] = set()
        self._lock = threading.Lock()
        self._sums: Callable[..., tuple[Tensor, ...]] | None = None
        self._main: Callable[..., tuple[Tensor, ...]] | None = None
        self._grad: Callable[..., None] | None = None
        self._scalars: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}

    def ready(self, dtype: torch.dtype, device: torch.device, *, warn: bool) -> bool:
        # Dynamo guards on torch's thread count too: a new count gets its own warm-up.
        key = (dtype, device, torch.get_num_threads() if device.type == "cpu" else 0)
        if key in self._warm:
            return True
        with self._lock:
            if self.failure is None and key not in self._warm:
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
                    self._warm.add(key)
        return key in self._warm

    def _warm_up(self, dtype: torch.dtype, device: torch.device) -> None:
        if self._sums is None:
            # Read the thread count when the kernel runs, not when it is compiled.
            options = {"cpp.dynamic_threads": True} if device.type == "cpu" else None
            self._sums = torch.compile(block_sums, dynamic=True, options=options)
            self._main = torch.compile(fused_main_sums, dynamic=True, options=options)
            self._grad = torch.compile(fused_chunk_grad, dynamic=True, options=options)
        # Every graph a pass can need, so that none compiles in the middle of one, each from
        # its most general case (storage offset 0, several rows): rows that are a last block
        # alone, contiguous and not (a slice of the vocabulary), and rows of whole blocks.
        # Sizes are chosen to share no value by chance; 1-row chunks reuse these graphs.
        for columns, pad in ((7, 0), (7, 3), (3 * BLOCK_COLUMNS + 5, 3)):
            width = columns + pad
            z = torch.linspace(-3.0, 3.0, 3 * width, device=device)
            z = z.view(3, width)[:, :columns].to(dtype)
            sums = self.sums(z, 1.0)
            m, s = sums[0], sums[1]
            out = torch.empty(z.shape, dtype=m.dtype, device=device)
            self.grad(z, m, torch.log(s), -m, m + 1.0, 1.0, out)

    def scalar(self, value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A cached 0-dim tensor: a Python float would be a constant in the compiled graph."""
        key = (value, dtype, device)
        if key not in self._scalars:
            self._scalars[key] = torch.tensor(value, dtype=dtype, device=device)
        return self._scalars[key]

    def sums(self, z: Tensor, inv_tau: float) -> Tensor:
        """`[5, c]` row max and sums `(m, s, t, u, w)` of logits `z [c, V]`, compute dtype."""
        tau = self.scalar(inv_tau, compute_dtype(z.dtype), z.device)
        whole = (z.shape[1] - 1) // BLOCK_COLUMNS  # blocks before the last (1 to BLOCK columns)
        split = whole * BLOCK_COLUMNS
        with _compiling(z.device):
            last = torch.stack(self._sums(_plain(z[:, split:]), tau))  # [5, c]
            if whole == 0:
                return last
            blocks = self._whole_blocks(z[:, :split], tau)  # [5, c, whole]
        return combine_blocks(torch.cat([blocks, last[:, :, None]], dim=2), inv_tau)

    def _whole_blocks(self, z: Tensor, tau: Tensor) -> Tensor:
        """`[5, c, nb]` block sums of `z [c, nb * BLOCK_COLUMNS]`. `_main` takes 2 or more rows
        of 2 or more blocks; one row, or one block, goes through `_sums` as `[nb, BLOCK]` or
        `[c, BLOCK]` (a graph of `_main` for each would cost every process its tracing)."""
        rows, blocks = z.shape[0], z.shape[1] // BLOCK_COLUMNS
        if rows == 1:
            one_row = z[0].view(blocks, BLOCK_COLUMNS)  # [nb, BLOCK], contiguous
            return torch.stack(self._sums(_plain(one_row), tau))[:, None, :]
        if blocks == 1:
            return torch.stack(self._sums(_plain(z), tau))[:, :, None]
        return torch.stack(self._main(_plain(z), tau))

    def grad(self, z, m, log_s, coef_x, coef_const, inv_tau: float, out: Tensor) -> None:
        """`fused_chunk_grad` compiled: writes into `out [c, V]` (any float dtype, not `z`)."""
        tau = self.scalar(inv_tau, m.dtype, z.device)
        with _compiling(z.device):
            per_row = (_plain(t) for t in (m, log_s, coef_x, coef_const))
            self._grad(_plain(z), *per_row, tau, _plain(out))


FUSED = FusedKernels()
