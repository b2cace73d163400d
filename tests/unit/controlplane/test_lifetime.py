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

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's"),
    pytest.mark.processes,  # children and launchers of their own
]

# What epochctl does first thing, then a long sleep.
CHILD = [
    sys.executable,
    "-c",
    "from epochserve.lifetime import die_with_launcher; die_with_launcher(); import time; time.sleep(60)",
]


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
    thread = threading.Thread(target=lambda: started.append(popen_tied_to_parent(CHILD)))
    thread.start()
    thread.join(10)
    child = started[0]
    try:
        time.sleep(2.0)  # the child's interpreter starts and arms the parent-death signal
        assert child.poll() is None, f"the child died with its starting thread (exit {child.returncode})"
    finally:
        child.kill()
        child.wait(10)


def test_a_child_dies_when_its_launcher_dies() -> None:
    launcher_code = (
        "import sys, threading, time\n"
        "from epochserve.lifetime import popen_tied_to_parent\n"
        f"child_args = {CHILD!r}\n"
        "box = []\n"
        "t = threading.Thread(target=lambda: box.append(popen_tied_to_parent(child_args)))\n"
        "t.start(); t.join()\n"
        "time.sleep(2.0)\n"  # the child arms the signal
        "print(box[0].pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        child = int(launcher.stdout.readline())
        assert _alive(child)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(10)
        assert _wait_until_dead(child, 10), "the child outlived its launcher"
    finally:
        launcher.kill()
        launcher.wait(10)
