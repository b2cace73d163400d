"""The role folders must install as epochserve.* (pyproject.toml lists the packages by hand)."""

import importlib
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _setuptools_table() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_in_pyproject():
    table = _setuptools_table()
    listed = set(table["packages"])
    for package, folder in table["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            name = ".".join([package, *relative.parts])
            assert name in listed, f"{init} is a package but {name} is not in pyproject's packages"


def test_every_listed_package_imports():
    for name in _setuptools_table()["packages"]:
        module = importlib.import_module(name)
        assert module.__name__ == name
