"""Test-session setup shared by every test module."""

import os

import torch

# Triton runs kernels on CPU tensors only in its interpreter, which it picks when a kernel is
# decorated (the import of entropy_dynamics._token_stats_triton): set it before any test imports
# that module. With CUDA present the same tests run the compiled kernels instead.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
