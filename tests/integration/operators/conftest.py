"""The PolicyRollout handler against a real coordinator and etcd reuses the control plane's test
harness (in-process coordinators, protocol-level fake workers) from tests/integration/controlplane,
whose modules import each other by their bare names: that folder goes on sys.path, and so does
tests/unit/operators (the CRD schema and pod-files testkits)."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[2]
for _folder in (str(_TESTS / "integration" / "controlplane"), str(_TESTS / "unit" / "operators")):
    if _folder not in sys.path:
        sys.path.insert(0, _folder)
