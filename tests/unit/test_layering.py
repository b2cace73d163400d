"""The dependency rule of docs/design.md §2, checked on the source: every import of an epochserve
module points down the layers (or stays inside its own room), never up or sideways.

    app                                    epochctl, local launcher, demo, verify: imported by nothing
    loadtest, operators                    clients of the services
    client                                 what a trainer imports: Generation client, PolicyPublisher
    worker, router                         the two serving processes; neither imports the other
    controlplane                           etcd store, coordinator, Admin, participants
    proto, kernels                         the wire contract; plain tensor functions
    epochserve (root)                      errors, sampling, lifetime, net, tls, aio

`kernels` is imported by `worker` only (and by nothing below it). Imports inside functions count
too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Each room and the rooms it may import (besides itself).
ROOT = "root"
ALLOWED: dict[str, set[str]] = {
    ROOT: set(),
    "proto": {ROOT},
    "kernels": {ROOT},
    "controlplane": {ROOT, "proto"},
    "worker": {ROOT, "proto", "kernels", "controlplane"},
    "router": {ROOT, "proto", "controlplane"},
    "client": {ROOT, "proto", "controlplane", "worker"},
    "loadtest": {ROOT, "proto", "controlplane", "worker", "client"},
    "operators": {ROOT, "proto", "controlplane"},
    "app": {ROOT, "proto", "kernels", "controlplane", "worker", "router", "client", "loadtest"},
}
FOLDER = {room: ("epochserve" if room == ROOT else room) for room in ALLOWED}


def room_of_module(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "epochserve":
        return None
    if len(parts) > 1 and parts[1] in ALLOWED and parts[1] != ROOT:
        return parts[1]
    return ROOT


def imported_modules(source: str) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
    return modules


def upward_imports(room: str, files: list[tuple[str, str]]) -> list[str]:
    """'file: module' for each import in files (path, source) that room may not make."""
    bad = []
    for path, source in files:
        for module in imported_modules(source):
            target = room_of_module(module)
            if target is not None and target != room and target not in ALLOWED[room]:
                bad.append(f"{path}: imports {module} ({room} -> {target})")
    return bad


def sources(room: str) -> list[tuple[str, str]]:
    folder = REPO / FOLDER[room]
    return [
        (str(path.relative_to(REPO)), path.read_text())
        for path in sorted(folder.rglob("*.py"))
        if "_pb2" not in path.name
    ]


def test_every_room_imports_only_the_rooms_below_it():
    bad = [line for room in ALLOWED for line in upward_imports(room, sources(room))]
    assert not bad, "imports against docs/design.md §2:\n" + "\n".join(bad)


def test_the_rule_has_no_cycles():
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in ALLOWED[start]
        )

    assert not [room for room in ALLOWED if reaches(room, room, {room})]


def test_every_top_level_package_is_a_room():
    # A new folder mapped into the namespace must be placed in the rule before it can be imported.
    import tomllib

    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(package_dir.values()) == set(FOLDER.values())


def test_an_upward_import_is_caught():
    # The check itself: a worker importing the router, the control plane importing the CLI, and a
    # lazy import inside a function are all refused; a downward one passes.
    worker_file = ("worker/x.py", "from epochserve.router.registry import WorkerRegistry\n")
    controlplane_file = ("controlplane/x.py", "def f():\n    import epochserve.app.cli.main\n")
    assert upward_imports("worker", [worker_file]) == [
        "worker/x.py: imports epochserve.router.registry (worker -> router)"
    ]
    assert len(upward_imports("controlplane", [controlplane_file])) == 1
    assert upward_imports("router", [("router/x.py", "from epochserve.proto.v1 import common_pb2\n")]) == []
