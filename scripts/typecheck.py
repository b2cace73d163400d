"""Run mypy over the epochserve namespace as it is installed.

mypy cannot follow setuptools' package-dir mapping of an editable install (an import hook), so
this mirrors the mapping as symlinks under build/typecheck (scripts/package_tree.py) and runs
`mypy -p epochserve` there. Extra arguments go to mypy.
"""

from __future__ import annotations

import os
import subprocess
import sys

from package_tree import REPO, build_tree

TREE = REPO / "build" / "typecheck"


def main() -> int:
    build_tree(TREE)
    env = {**os.environ, "MYPYPATH": str(TREE)}
    cmd = [sys.executable, "-m", "mypy", "-p", "epochserve", *sys.argv[1:]]
    return subprocess.call(cmd, cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
