"""tests/kernels compare each Triton kernel with its reference on CPU tensors through the Triton
interpreter (tests/conftest.py turns it on when there is no GPU). On a GPU machine the interpreter is
off, so those comparisons are skipped here and tests/gpu/test_kernels_gpu.py runs them on CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_HERE = Path(__file__).parent
_RUNS_ANYWHERE = {"test_sm90_compile.py"}  # compiles in a subprocess of its own


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    skip = pytest.mark.skip(reason="CPU-interpreter comparison; tests/gpu runs it on CUDA")
    for item in items:
        if item.path.parent == _HERE and item.path.name not in _RUNS_ANYWHERE:
            item.add_marker(skip)
