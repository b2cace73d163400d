"""Mirror the installed layout of the epochserve namespace as symlinks: DEST/epochserve/worker → worker/...

For tools and machines that cannot use the editable install's import hook: mypy (scripts/typecheck.py)
and the lent GPU machines, which run from a copy of the tree with PYTHONPATH=DEST and no pip install.
Usage: python scripts/package_tree.py DEST
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_tree(dest: Path) -> None:
    mapping = dict(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"])
    shutil.rmtree(dest, ignore_errors=True)
    root = dest / "epochserve"
    root.mkdir(parents=True)
    # The root package is a real folder here (its subpackages are linked into it), so link its
    # files one by one rather than the folder itself.
    for path in (REPO / mapping.pop("epochserve")).iterdir():
        if path.suffix == ".py" or (path / "__init__.py").is_file():  # modules and subpackages
            os.symlink(path, root / path.name, target_is_directory=path.is_dir())
    for package, folder in sorted(mapping.items()):
        os.symlink(REPO / folder, dest.joinpath(*package.split(".")), target_is_directory=True)


if __name__ == "__main__":
    build_tree(Path(sys.argv[1]).resolve())
