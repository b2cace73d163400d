"""Every kernel configuration the engine launches compiles for sm_90 (H100) with the installed
Triton, without spilling registers; run in a subprocess because this session's kernels may be
defined for the interpreter. Catches what the interpreter accepts but the compiler rejects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"

pytestmark = pytest.mark.processes  # a compiler run in a process of its own (~40 s on 2 cores)


@pytest.mark.skipif(not PTXAS.exists(), reason="this triton wheel ships no ptxas")
def test_all_kernels_compile_for_sm90_without_spills() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("sm90_compile.py")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if "regs=" in line]
    assert len(lines) >= 20, result.stdout
    spilled = [line for line in lines if "stack=0" not in line or "LDL=" in line or "STL=" in line]
    assert not spilled, "\n".join(spilled)
    tensor_core = [line for line in lines if line.startswith(("attention bf16", "matmul bf16"))]
    assert all("MMA=" in line for line in tensor_core), "\n".join(tensor_core)
    # Rotary rounds each product to the input dtype before the sum, as PyTorch and transformers do:
    # a 16-bit fma there skips that rounding (kernels/rotary_triton.py), in the separate kernels and
    # in the rotation folded into decode attention.
    rotating = [line for line in lines if line.startswith("rotary") or "rope" in line]
    assert len(rotating) >= 3 and not [line for line in rotating if "FMA16=" in line], "\n".join(rotating)
