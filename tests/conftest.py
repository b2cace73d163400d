"""Shared fixtures live in tests/fixtures/, one module per kind of real component."""

import os

import torch

# Triton kernels run on the CPU through the interpreter; the flag must be set before any module
# defines a kernel (tests/kernels import them), and only where there is no GPU to run them on.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["fixtures.etcd", "fixtures.models"]
