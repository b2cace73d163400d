"""Process lifetime helpers shared by every launcher: children never outlive their parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "EPOCHSERVE_DIE_WITH_PARENT"  # set by popen_tied_to_parent, read by die_with_launcher

# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: a worker
# restarted from a short-lived thread was SIGKILLed as soon as that thread returned. Children are
# therefore forked from this one thread, which lives as long as the process.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (a no-op elsewhere).

    Safe to call first thing in a child (multiprocessing's spawn, or after exec).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def popen_tied_to_parent(
    args: list[str], env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.Popen[bytes]:
    """subprocess.Popen of a child that the kernel kills when this process dies, whatever thread
    asks (see _spawner), provided the child calls die_with_launcher() first thing (epochctl does).

    No preexec_fn: Python code between fork and exec runs gRPC's fork handlers in the child, which
    abort it when this process has gRPC channels open; without one, subprocess uses vfork.
    """
    child_env = {**(os.environ if env is None else env), PARENT_PID_ENV: str(os.getpid())}

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, env=child_env, **kwargs)

    return _spawner.submit(spawn).result()


def die_with_launcher() -> None:
    """In a child of popen_tied_to_parent: die with the launcher (and exit now if it is gone)."""
    launcher = os.environ.pop(PARENT_PID_ENV, None)
    if launcher is None:
        return
    die_with_parent()
    if os.getppid() != int(launcher):  # it died before the kernel was told to watch it
        os._exit(1)
