"""Children started by launchers live exactly as long as the launcher process (epochserve/lifetime.py).

The kernel's parent-death signal is tied to the thread that forked the child: a worker restarted
from a short-lived thread (the soak's chaos thread, a supervisor callback) used to be killed the
moment that thread returned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from epochserve.lifetime import popen_tied_to_parent

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited already
        return stat.read().split(") ")[1][0] != "Z"


def _wait_until_dead(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_a_child_started_from_a_thread_outlives_the_thread() -> None:
    started: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(target=lambda: started.append(popen_tied_to_parent(["sleep", "30"])))
    thread.start()
    thread.join(10)
    child = started[0]
    try:
        time.sleep(0.5)
        assert child.poll() is None, f"the child died with its starting thread (exit {child.returncode})"
    finally:
        child.kill()
        child.wait(10)


def test_a_child_dies_when_its_parent_process_dies() -> None:
    parent_code = (
        "import threading, sys, time\n"
        "from epochserve.lifetime import popen_tied_to_parent\n"
        "box = []\n"
        "t = threading.Thread(target=lambda: box.append(popen_tied_to_parent(['sleep', '60'])))\n"
        "t.start(); t.join()\n"
        "print(box[0].pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        assert _alive(grandchild)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _wait_until_dead(grandchild, 10), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait(10)
