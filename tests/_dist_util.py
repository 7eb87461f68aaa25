"""Test helper: run a function in N local CPU processes joined by a gloo process group.

Usage (from any test module; ``fn`` must be a module-level function so it can be pickled):

    from _dist_util import run_in_processes

    def _per_rank(rank, world_size, data):
        ...                      # torch.distributed is initialised here (gloo, loopback only)
        return result            # anything picklable (tensors are fine)

    results = run_in_processes(_per_rank, world_size=2, args=(data,))   # [rank0_result, ...]

Processes are forked from a ``forkserver`` that has imported torch once (never from the test
process itself, which may already run OpenMP threads), so after the first call a run costs
about a second; they use one intra-op thread each and talk over ``tcp://127.0.0.1:<free port>``.
An exception in any rank is re-raised in the parent with that rank's traceback; a rank that
dies without reporting fails the call at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import traceback

__all__ = ["free_port", "run_in_processes"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(fn, rank, world_size, port, args, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
        )
        try:
            value = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        # Plain pickle copies tensor data (no shared-memory handles that die with this process).
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def _raise_if_dead(procs, outputs) -> None:
    """Fail fast when a rank died without reporting (a crash, or a failed start)."""
    for r, proc in enumerate(procs):
        if r not in outputs and proc.exitcode not in (None, 0):
            raise RuntimeError(
                f"rank {r} exited with code {proc.exitcode} before reporting a result "
                "(its stderr is above)"
            )


def run_in_processes(fn, *, world_size: int = 2, args: tuple = (), timeout: float = 60.0) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; return results by rank.

    ``fn`` and ``args`` must be picklable. Raises ``RuntimeError`` with the failing rank's
    traceback, or ``TimeoutError`` if the ranks do not all finish within ``timeout`` seconds.
    """
    ctx = mp.get_context("forkserver")
    # The fork server imports torch once (and runs nothing parallel); each rank is forked from it.
    ctx.set_forkserver_preload(["torch", "torch.distributed"])
    results = ctx.Queue()
    port = free_port()
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned children only at start
    try:
        procs = [
            ctx.Process(target=_worker, args=(fn, r, world_size, port, args, results), daemon=True)
            for r in range(world_size)
        ]
        for proc in procs:
            proc.start()
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    outputs: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outputs) < world_size:
            try:
                r, ok, payload = results.get(timeout=0.2)
            except queue.Empty:
                _raise_if_dead(procs, outputs)
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{world_size - len(outputs)} of {world_size} ranks did not finish "
                        f"within {timeout} s"
                    ) from None
                continue
            if not ok:
                raise RuntimeError(f"rank {r} failed:\n{payload}")
            outputs[r] = pickle.loads(payload)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return [outputs[r] for r in range(world_size)]
