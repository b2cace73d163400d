"""The PolicyRollout handler against a real coordinator and etcd reuses the control plane's test
harness (in-process coordinators, protocol-level fake workers) from tests/integration/controlplane,
whose modules import each other by their bare names: that folder goes on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

_CONTROLPLANE_TESTS = str(Path(__file__).resolve().parents[1] / "controlplane")
if _CONTROLPLANE_TESTS not in sys.path:
    sys.path.insert(0, _CONTROLPLANE_TESTS)
