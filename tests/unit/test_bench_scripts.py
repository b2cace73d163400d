"""Every bench script still runs after a move: it imports, its lazy imports resolve, its argument
parsing works; the shell drivers parse, name files that exist and pass options their scripts take.
CPU only; nothing is benchmarked except profile_steps.py and overlap_step.py, end to end on tiny
models.

A script (a bench/*.py with a `__main__` block) exposes build_parser(), so that its options can be
checked without running it; bench/*.py files without one (gpu_common.py) are shared modules and
need only import. New scripts are covered by the glob.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from fixtures.engine import make_request, run_to_completion

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
PY_FILES = sorted(BENCH.glob("*.py"))
SH_FILES = sorted(BENCH.glob("*.sh"))
LOCAL_ROOTS = {"epochserve", "fixtures"} | {p.stem for p in PY_FILES}  # what the lazy-import check follows


def is_script(path: Path) -> bool:
    return any(
        isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        for node in ast.parse(path.read_text()).body
    )


@pytest.fixture
def import_bench(monkeypatch):
    """Import bench/NAME.py as a module, as `python bench/NAME.py` would see it; sys.path and the
    bench modules it loaded are put back afterwards (the scripts put bench/ and tests/ on sys.path)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)

    def load(path: Path) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
        return module

    yield load
    for name in set(sys.modules) - before:
        file = getattr(sys.modules[name], "__file__", None) or ""
        if name.startswith("bench_") or Path(file).parent == BENCH:
            del sys.modules[name]


def test_the_glob_finds_the_scripts():
    assert {"profile_steps.py", "gpu_common.py", "w1_w2.py"} <= {p.name for p in PY_FILES}
    assert SH_FILES


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: p.name)
def test_imports_and_parses_its_arguments(path: Path, import_bench, capsys):
    module = import_bench(path)
    if not is_script(path):
        return
    assert hasattr(module, "build_parser"), f"{path.name}: expose build_parser() (see this file's docstring)"
    parser = module.build_parser()
    parser.parse_args([])  # the defaults parse (types applied to string defaults)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def _imported_names(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name or None) of every import of ours in the file, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in LOCAL_ROOTS:
                found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] in LOCAL_ROOTS]
    return found


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: p.name)
def test_lazy_imports_resolve(path: Path, import_bench):
    """Imports inside functions (GPU paths, fixtures) are not run by --help: resolve them here."""
    import_bench(path)  # puts bench/ and tests/ on sys.path as the script does
    missing = []
    for line, module_name, name in _imported_names(path):
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            missing.append(f"line {line}: {module_name} ({error})")
            continue
        if name is not None and not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"line {line}: {name} from {module_name}")
    assert not missing, f"{path.name}: " + "; ".join(missing)


REPO_PATH = re.compile(r"\b((?:bench|tests|scripts)/[\w./-]+\.(?:py|sh))\b")  # a file the driver runs
BENCH_CALL = re.compile(r"\bpython3?\s+(bench/[\w.-]+\.py)\b([^\n]*)")  # a script and its arguments
SHELL_END = {"2>&1", "|", ";", "&&", "||", ">", "2>", "&"}


def bench_calls(path: Path) -> list[tuple[str, list[str]]]:
    """(script, argv) of each `python3 bench/X.py ...` in a driver; `${1:-4}` or `${NAME:-4}` reads as
    its default, and "$@" (the driver's own arguments, passed on) as nothing."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", path.read_text().replace("\\\n", " "))
    calls = []
    for script, rest in BENCH_CALL.findall(text):
        argv = []
        for token in shlex.split(rest, comments=True):
            if token in SHELL_END:
                break
            if token != "$@":
                argv.append(token)
        calls.append((script, argv))
    return calls


@pytest.mark.parametrize("path", SH_FILES, ids=lambda p: p.name)
def test_shell_driver_parses_and_names_existing_files(path: Path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    missing = sorted({rel for rel in REPO_PATH.findall(path.read_text()) if not (REPO / rel).is_file()})
    assert not missing, f"{path.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("path", SH_FILES, ids=lambda p: p.name)
def test_shell_driver_passes_options_its_scripts_take(path: Path, import_bench):
    for script, argv in bench_calls(path):
        parser = import_bench(REPO / script).build_parser()
        try:
            parser.parse_args(argv)
        except SystemExit as exit_info:
            pytest.fail(f"{path.name}: {script} {' '.join(argv)} -> exit {exit_info.code}")


def test_shell_patterns_find_what_the_drivers_run():
    """The patterns above must keep seeing the drivers' calls, or the checks pass vacuously."""
    named = {rel for path in SH_FILES for rel in REPO_PATH.findall(path.read_text())}
    assert {"bench/device_env.sh", "scripts/package_tree.py", "tests/gpu/test_engine_gpu.py"} <= named
    calls = dict(call for path in SH_FILES for call in bench_calls(path))
    assert calls["bench/soak.py"][:4] == ["--device", "cuda", "--model", "llama-1b"]
    assert "--rollout-every" in calls["bench/soak.py"]  # after a line continuation
    assert calls["bench/decode_profile.py"] == []


def test_profile_steps_runs_on_a_tiny_model_with_run_ahead(import_bench, capsys):
    """The device-side index assertion: the phases were timed on a batch scheduled while a run-ahead
    step was in flight (its sequences had nothing uncomputed, so the logits index of the first was
    -1). Run-ahead is forced on here, as on CUDA."""
    profile_steps = import_bench(BENCH / "profile_steps.py")
    profile_steps.main(["--device", "cpu", "--shape", "tiny", "--workloads", "1x16,3x24", "--steps", "3",
                        "--max-tokens", "12", "--async-scheduling", "on"])  # fmt: skip
    out = capsys.readouterr().out
    assert "run-ahead on" in out
    for label in ("batch 1 prompt 16", "batch 3 prompt 24"):
        line = next(line for line in out.splitlines() if line.startswith(label))
        for phase in ("schedule", "plan", "launch", "wait", "resolve", "total", "step"):
            assert f" {phase}=" in line, line
    assert "lm_head comparison: CUDA only" in out


def test_overlap_step_times_both_versions_side_by_side(import_bench, tmp_path):
    """bench/overlap_step.py end to end on a tiny model: one row on one version, then each overlap
    row with exactly K sequences on the staged twins of v1 and the rest on v0 (the script checks the
    split and that the drain is an overlap, not a fallback to finish)."""
    overlap_step = import_bench(BENCH / "overlap_step.py")
    out = tmp_path / "result.json"
    overlap_step.main(["--device", "cpu", "--shape", "tiny", "--batch", "6", "--context", "24",
                       "--splits", "2,5", "--steps", "3", "--profile", "1", "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [row["on_new"] for row in rows] == [0, 2, 5]
    assert all(row["ms_per_step"] > 0 and row["vs_one_version"] > 0 for row in rows)
    assert all("kernel_ms_per_step" in row for row in rows)  # --profile ran (no device time on a CPU)


def test_profile_steps_phases_leave_the_engine_as_its_own_steps_would(import_bench, tmp_path):
    """Timed synchronous steps, then the engine's run-ahead steps, then the rest: the same greedy
    tokens as an engine that steps on its own from the start (same random weights, same batch)."""
    profile_steps = import_bench(BENCH / "profile_steps.py")
    gpu_common = sys.modules["gpu_common"]  # the script's own import of bench/gpu_common.py
    argv = ["--device", "cpu", "--shape", "tiny", "--async-scheduling", "on"]
    args = profile_steps.build_parser().parse_args(argv)
    model_dir = gpu_common.write_config(tmp_path / "m", gpu_common.LLAMA_TINY)

    profiled = profile_steps.make_bench_engine(args, model_dir, 3)
    profile_steps.add_requests(profiled, "r", 3, 20, 12)
    seqs = list(profiled.scheduler.waiting)
    profile_steps.prefill(profiled)
    ran_ahead = profiled.num_run_ahead_steps
    profile_steps.phases(profiled, 3)
    assert profiled.num_run_ahead_steps > ran_ahead  # the engine's own steps in phases() ran ahead
    while profiled.has_work():
        profiled.step()

    reference = profile_steps.make_bench_engine(args, model_dir, 3)
    requests = [make_request(s.request_id, s.prompt_token_ids, reference.limits, temperature=0.0,
                             max_tokens=12, ignore_eos=True) for s in seqs]  # fmt: skip
    results = run_to_completion(reference, requests)
    for seq in seqs:
        assert len(seq.output_token_ids) == 12
        assert seq.output_token_ids == results[seq.request_id][0].token_ids
