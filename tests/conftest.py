"""Shared fixtures live in tests/fixtures/, one module per kind of real component."""

import os
import signal
import sys
from pathlib import Path

# The repo root must not be on sys.path (`python -m pytest` puts it there): its kernels/ folder would
# shadow Hugging Face's `kernels` package, which transformers imports. Children started with
# `python -m` inherit the same rule. The package itself imports as epochserve.* from the install.
_REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO_ROOT]
os.environ["PYTHONSAFEPATH"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# Triton kernels run on the CPU through the interpreter; the flag must be set before any module
# defines a kernel (tests/kernels import them), and only where there is no GPU to run them on.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["fixtures.etcd", "fixtures.models"]

# Every test in these tiers starts real processes (etcd, coordinator, workers, routers): marked
# `processes` here, so that `make test-fast` (-m "not processes") leaves them out without a list to
# keep. A unit or kernel test that starts such processes carries the marker itself.
_PROCESS_TIERS = (_REPO_ROOT / "tests" / "integration", _REPO_ROOT / "tests" / "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.path.is_relative_to(tier) for tier in _PROCESS_TIERS):
            item.add_marker(pytest.mark.processes)


@pytest.fixture(autouse=True)
def _sigint_left_as_found():
    """A test that leaves SIGINT handled otherwise than it found it (an asyncio loop's handler never
    removed), or blocked in the main thread, changes what Ctrl-C does for the rest of the session:
    the state is put back and that test fails."""
    before = signal.getsignal(signal.SIGINT)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"the test left SIGINT handled by {after!r}", pytrace=False)
    now_blocked = signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if now_blocked != blocked:
        pytest.fail(f"the test left the main thread blocking {now_blocked - blocked}", pytrace=False)
