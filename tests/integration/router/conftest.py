"""Fixtures of the router integration tests: tiny models whose versions have different weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.engine import hf_model
from fixtures.models import build_tiny_model


@pytest.fixture(scope="session")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, object], Path]:
    """(A: the weights workers start with = version 0, {version: HF model} for 0..3, the root where
    checkpoints of later versions go). Versions 1-3 have weights of their own."""
    root = tmp_path_factory.mktemp("versions")
    a_dir = build_tiny_model("llama", root / "A", seed=0)
    models = {0: hf_model(a_dir)}
    for version in (1, 2, 3):
        models[version] = hf_model(build_tiny_model("llama", root / f"raw{version}", seed=version))
    return a_dir, models, root
