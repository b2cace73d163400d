"""Helpers of the `epochctl up` tests: a user's shell, waiting on conditions, light load through a router,
and a record of every process a launcher started (to check that none is left after it stopped)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from epochserve.client.errors import GenerationError
from epochserve.client.generation import GenerationClient
from epochserve.sampling import SamplingParams

PROMPT = [5, 17, 33, 9, 100, 200, 300, 7, 8, 11]


def user_env(tmp_path: Path) -> dict[str, str]:
    """A shell with nothing of ours exported (the test process sets PYTHONSAFEPATH and, without a
    GPU, TRITON_INTERPRET); temporary directories land under tmp_path."""
    ours = ("PYTHONSAFEPATH", "TRITON_INTERPRET")
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("EPOCHSERVE_")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {**env, "TMPDIR": str(tmp_path / "tmp")}


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, on_timeout: Callable[[], str] = lambda: ""
) -> None:
    """Poll `condition` every 0.2 s; AssertionError naming `what` (and `on_timeout()`) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{on_timeout()}")
        time.sleep(0.2)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) from /proc; None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": comm may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def is_alive(pid: int, started: int | None = None) -> bool:
    """Whether process `pid` runs (a zombie does not), and is the one that started at `started`."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and (started is None or stat[2] == started)


class ProcessTracker:
    """Every descendant of `root` seen by sample(): (pid, start time), so that a pid the system has
    given to some other process since is not mistaken for one that was left behind."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: set[tuple[int, int]] = set()

    def sample(self) -> None:
        children: dict[int, list[tuple[int, int]]] = {}
        for entry in Path("/proc").iterdir():
            stat = _stat(int(entry.name)) if entry.name.isdigit() else None
            if stat is not None:
                children.setdefault(stat[1], []).append((int(entry.name), stat[2]))
        todo = [self.root]
        while todo:
            for pid, started in children.get(todo.pop(), []):
                self.seen.add((pid, started))
                todo.append(pid)

    def alive(self) -> list[tuple[int, int]]:
        return sorted(p for p in self.seen if is_alive(*p))


@dataclass(frozen=True, slots=True)
class Outcome:
    started: float  # time.monotonic()
    version: int | None  # the policy version that served it; None when it failed
    error: str = ""


class Load:
    """NUM_CLIENTS threads sending small sampled requests through one router, one after another,
    until the `with` block ends. UNAVAILABLE and DEADLINE_EXCEEDED are what a killed process causes
    (a request on a worker that died after sending tokens; a router that is down); any other
    failure lands in `unexpected`."""

    NUM_CLIENTS = 3
    REQUEST_TIMEOUT = 10.0  # seconds; a request waits for a router that is down at most this long
    EXPECTED = ("UNAVAILABLE", "DEADLINE_EXCEEDED")

    def __init__(self, router: str) -> None:
        self.client = GenerationClient(router, timeout=self.REQUEST_TIMEOUT)
        self.outcomes: list[Outcome] = []
        self.unexpected: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(self.NUM_CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.REQUEST_TIMEOUT + 30)
        self.client.close()

    def _run(self, index: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            started = time.monotonic()
            sampling = SamplingParams(temperature=1.0, max_tokens=6, seed=i, ignore_eos=True)
            try:
                result = self.client.generate(PROMPT[: 3 + i % 7], sampling, request_id=f"load{index}-{i}")
            except GenerationError as e:
                self.outcomes.append(Outcome(started, None, e.code.name))
                if e.code.name not in self.EXPECTED:
                    self.unexpected.append(str(e))
                self._stop.wait(0.2)
                continue
            except Exception as e:  # a response that mixes versions, say: the test must fail
                self.unexpected.append(repr(e))
                self._stop.wait(0.2)
                continue
            self.outcomes.append(Outcome(started, result.policy_version))
            self._stop.wait(0.05)

    def failures(self, since: float) -> list[Outcome]:
        """The requests sent since `since` (time.monotonic()) that failed."""
        return [o for o in list(self.outcomes) if o.started >= since and o.version is None]

    def wait_served(self, after: float, timeout: float, version: int | None = None, count: int = 3) -> None:
        """Until `count` requests sent after `after` (time.monotonic()) succeeded (under `version`)."""

        def served() -> bool:
            ok = [
                o
                for o in list(self.outcomes)
                if o.started >= after and o.version is not None and (version is None or o.version == version)
            ]
            return len(ok) >= count

        def recent() -> str:
            return f"last outcomes: {self.outcomes[-6:]}"

        what = f"{count} requests to succeed" + (f" under v{version}" if version is not None else "")
        wait_until(served, timeout, what, on_timeout=recent)
