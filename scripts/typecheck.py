"""Run mypy over the epochserve namespace as it is installed.

mypy cannot follow setuptools' package-dir mapping of an editable install (an import hook), so
this mirrors the mapping from pyproject.toml as a tree of symlinks under build/typecheck and runs
`mypy -p epochserve` there. Extra arguments go to mypy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = REPO / "build" / "typecheck"


def build_tree() -> None:
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    root = TREE / "epochserve"
    root.mkdir(parents=True)
    # The root package is a real folder here (its subpackages are linked into it), so link its
    # files one by one rather than the folder itself.
    for path in (REPO / mapping.pop("epochserve")).glob("*.py"):
        os.symlink(path, root / path.name)
    for package, folder in sorted(mapping.items()):
        os.symlink(REPO / folder, TREE.joinpath(*package.split(".")), target_is_directory=True)


def main() -> int:
    build_tree()
    env = {**os.environ, "MYPYPATH": str(TREE)}
    cmd = [sys.executable, "-m", "mypy", "-p", "epochserve", *sys.argv[1:]]
    return subprocess.call(cmd, cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
