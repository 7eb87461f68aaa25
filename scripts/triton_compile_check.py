"""Compile every Triton kernel that `token_stats` launches for NVIDIA GPUs, on a machine without one.

Triton's interpreter (how the tests run the kernels on CPU) never meets Triton's compiler: a
kernel can pass every interpreter test and still fail to compile, or ask for more shared memory
than a GPU has, the first time it meets CUDA. This script closes that gap without a GPU. Triton
ships its compiler and NVIDIA's `ptxas`, so it builds the real cubins here:

- the public functions run on small CPU tensors (`token_stats` and `token_stats_from_hidden`,
  forward and backward, each dtype, with and without bias, masks, odd vocabularies, strided
  logits), with `backend="triton"`;
- each kernel launch they make is handed to Triton's own `warmup` (its launcher's argument
  binding and specialisation, then the compiler down to a cubin) for each `--arch` (default 80
  and 90: A100, H100 / H200) through a stand-in driver that reports that GPU; nothing is
  launched, and the torch backend computes the numbers the calls go on with;
- `cuobjdump` (also in Triton's wheel) reads each cubin's registers and spills.

A variant fails when it does not compile or when its shared memory exceeds what the GPU lets one
block have (Triton would raise `OutOfResources` at launch). Prints one markdown table; exits 0
when every variant passes, 1 otherwise, 2 when this Triton has no CUDA compiler to run.

    python scripts/triton_compile_check.py [--arch 80 90] [--out table.md]

Run without `TRITON_INTERPRET` set (the kernels must be compiled, not interpreted).
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Largest shared memory one block may opt into, bytes (CUDA programming guide, compute
# capabilities table): sm_80 163 KiB, sm_86/89 99 KiB, sm_90 227 KiB.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


@dataclass
class Build:
    case: str
    arch: int
    kernel: str = ""
    ok: bool = False
    error: str = ""
    shared: int = 0
    registers: int = 0
    spill_bytes: int = 0
    seconds: float = 0.0


class _StandInDriver:
    """What Triton's launcher asks its driver while binding and compiling: one GPU of `arch`."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.arch  # one launcher cache per architecture

    def get_current_stream(self, device=None):
        return 0


class _CompileOnlyKernels:
    """Stands in for `_token_stats_triton`: a launch `kernel[grid](...)` compiles (Triton's
    `warmup`, same binding as a launch) and records the build instead of running."""

    INTERPRETED = False

    def __init__(self, module, builds: list[Build], case: str, arch: int):
        self._module, self._builds, self._case, self._arch = module, builds, case, arch

    def __getattr__(self, name):
        kernel = getattr(self._module, name)
        if not hasattr(kernel, "warmup"):
            return kernel
        return _Launcher(kernel, self)


class _Launcher:
    def __init__(self, kernel, owner: _CompileOnlyKernels):
        self.kernel, self.owner = kernel, owner

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            build = Build(self.owner._case, self.owner._arch, self.kernel.__name__)
            self.owner._builds.append(build)
            start = time.perf_counter()
            compiled = self.kernel.warmup(*args, grid=grid, **kwargs)
            build.seconds = time.perf_counter() - start
            build.shared = int(compiled.metadata.shared)
            build.registers, build.spill_bytes = _resource_usage(compiled.asm["cubin"])
            limit = SHARED_LIMIT.get(self.owner._arch)
            if limit is not None and build.shared > limit:
                build.error = f"needs {build.shared} B of shared memory, the GPU allows {limit}"
            else:
                build.ok = True

        return launch


def _build_then_torch(kernels):
    """A `TritonBackend` whose launches only build (through `kernels`) and whose numbers come
    from the torch backend, so the public functions carry on as on a GPU: their checks of the
    statistics (finite sums) and their backward pass need real values."""
    from entropy_dynamics._token_stats_backends import TORCH, TritonBackend

    def build_then_torch(name):
        def method(self, *args):
            getattr(TritonBackend, name)(self, *args)  # builds the kernels, launches nothing
            return getattr(TORCH, name)(*args)

        return method

    launching = ("logits_sums", "logits_grad", "hidden_sums", "block_grad")
    BuildThenTorch = type(
        "BuildThenTorch", (TritonBackend,), {name: build_then_torch(name) for name in launching}
    )
    return BuildThenTorch(kernels)


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, local-memory bytes per thread) that `cuobjdump` reads off a cubin."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        text = subprocess.run(
            [knobs.nvidia.cuobjdump.path, "--dump-resource-usage", file.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    fields = dict(
        item.split(":", 1) for line in text.splitlines() if "REG:" in line for item in line.split()
    )
    return int(fields.get("REG", 0)), int(fields.get("LOCAL", 0))


def _cases():
    """(name, call) pairs: each call runs one public function forward and backward on CPU tensors."""
    from entropy_dynamics import token_stats, token_stats_from_hidden

    def logits_case(dtype, vocab, *, stride=1, temperature=1.0):
        def run():
            gen = torch.Generator().manual_seed(0)
            base = torch.randn(2, 3, vocab * stride, generator=gen).to(dtype)
            logits = base.requires_grad_(True)[..., ::stride]
            labels = torch.randint(0, vocab, (2, 3), generator=gen)
            mask = torch.tensor([[True, True, False], [True, False, True]])
            stats = token_stats(
                logits, labels, mask=mask, temperature=temperature, backend="triton"
            )
            (stats.logprobs.sum() + stats.entropy.sum()).backward()

        return run

    def hidden_case(dtype, dim, *, bias=False, tf32=False, vocab=4000):
        def run():
            gen = torch.Generator().manual_seed(0)
            hidden = torch.randn(2, 3, dim, generator=gen).to(dtype).requires_grad_(True)
            weight = (torch.randn(vocab, dim, generator=gen) / dim**0.5).to(dtype)
            weight.requires_grad_(True)
            b = torch.zeros(vocab, dtype=dtype, requires_grad=True) if bias else None
            labels = torch.randint(0, vocab, (2, 3), generator=gen)
            saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                stats = token_stats_from_hidden(hidden, weight, labels, bias=b, backend="triton")
            finally:
                torch.backends.cuda.matmul.allow_tf32 = saved
            (stats.logprobs.sum() + stats.entropy.sum()).backward()

        return run

    bf16, fp16, fp32, fp64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
    # Only the dtypes, the flags and whether sizes divide by 16 change what Triton compiles
    # (the vocabulary and D are runtime arguments), so the hidden cases keep V small.
    return [
        ("logits bf16 V=151936", logits_case(bf16, 151936)),
        ("logits fp16 V=151936 tau=0.7", logits_case(fp16, 151936, temperature=0.7)),
        ("logits fp32 V=151936", logits_case(fp32, 151936)),
        ("logits fp64 V=151936", logits_case(fp64, 151936)),
        ("logits bf16 V=32001", logits_case(bf16, 32001)),
        ("logits fp32 V=1000 column stride 2", logits_case(fp32, 1000, stride=2)),
        ("hidden bf16 D=896 V=4000", hidden_case(bf16, 896)),
        ("hidden bf16 D=3584 V=4000 bias", hidden_case(bf16, 3584, bias=True)),
        ("hidden fp16 D=896 V=4000 bias", hidden_case(fp16, 896, bias=True)),
        ("hidden fp32 D=896 V=4000 ieee", hidden_case(fp32, 896)),
        ("hidden fp32 D=896 V=4000 tf32", hidden_case(fp32, 896, tf32=True)),
        ("hidden fp64 D=896 V=4000", hidden_case(fp64, 896)),
        ("hidden bf16 D=24 V=1001", hidden_case(bf16, 24, vocab=1001)),
    ]


def check(arches: list[int]) -> list[Build]:
    """Every case's launches built for every arch (see the module docstring)."""
    import triton
    from triton.runtime.driver import driver

    from entropy_dynamics import _token_stats_triton as kernels

    token_stats_module = importlib.import_module("entropy_dynamics.token_stats")

    if kernels.INTERPRETED:
        raise SystemExit("unset TRITON_INTERPRET: this check compiles the kernels")
    builds: list[Build] = []
    original = token_stats_module.resolve_backend
    try:
        for arch in arches:
            driver.set_active(_StandInDriver(arch))
            for case, run in _cases():
                stand_in = _CompileOnlyKernels(kernels, builds, case, arch)
                backend = _build_then_torch(stand_in)
                token_stats_module.resolve_backend = lambda *a, _b=backend, **kw: _b
                before = len(builds)
                try:
                    run()
                except Exception as err:  # a compile error names the kernel and the line
                    if len(builds) > before and not builds[-1].ok and not builds[-1].error:
                        failed = builds[-1]
                    else:
                        failed = Build(case, arch, "?")
                        builds.append(failed)
                    failed.error = " ".join(f"{type(err).__name__}: {err}".split())[:300]
                if len(builds) == before:
                    builds.append(Build(case, arch, "-", error="launched no Triton kernel"))
    finally:
        token_stats_module.resolve_backend = original  # the stand-in driver stays: no GPU here
    print(f"triton {triton.__version__}, torch {torch.__version__}", file=sys.stderr)
    return builds


def table(builds: list[Build]) -> str:
    lines = [
        "| case | arch | kernel | result | shared KiB | registers | spill B | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in builds:
        result = "ok" if b.ok else f"FAIL: {b.error}"
        lines.append(
            f"| {b.case} | sm_{b.arch} | {b.kernel} | {result} | {b.shared / 1024:.1f} | "
            f"{b.registers} | {b.spill_bytes} | {b.seconds:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("error: unset TRITON_INTERPRET: this check compiles the kernels", file=sys.stderr)
        return 2
    try:
        from triton import knobs
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401

        knobs.nvidia.cuobjdump.path  # noqa: B018 (raises when the wheel lacks the tool)
    except Exception as err:
        print(f"error: this triton cannot compile for CUDA here: {err}", file=sys.stderr)
        return 2
    builds = check(args.arch)
    text = table(builds)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    failed = [b for b in builds if not b.ok]
    print(f"{len(builds) - len(failed)} of {len(builds)} kernel builds passed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
