"""Process lifetime helpers shared by every launcher: children never outlive their parent."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PR_SET_PDEATHSIG = 1

# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: a worker
# restarted from a short-lived thread was SIGKILLed as soon as that thread returned. Children are
# therefore forked from this one thread, which lives as long as the process.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (a no-op elsewhere).

    Safe to call between fork and exec (subprocess's preexec_fn) or first thing in a child.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def popen_tied_to_parent(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen(args, **kwargs) of a child the kernel kills when this process dies, whatever
    thread asks (see _spawner)."""
    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, preexec_fn=die_with_parent, **kwargs)

    return _spawner.submit(spawn).result()
