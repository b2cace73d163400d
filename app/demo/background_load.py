"""Extra load for the demo: closed-loop requests through a router while the RL loop runs.

Every response is checked on arrival (the client raises MixedVersionError for a response mixing
versions); every request ends as a response or an explicit error (I5), and both are counted.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from epochserve.client.errors import GenerationError
from epochserve.client.generation import GenerationClient
from epochserve.proto.results import MixedVersionError
from epochserve.sampling import SamplingParams


@dataclass
class LoadSummary:
    sent: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    mixed_versions: int = 0
    per_version: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, end to end
    output_tokens: int = 0
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        """Requests that ended neither in a response nor in an explicit error (must be 0)."""
        return self.sent - self.completed - sum(self.errors.values()) - self.mixed_versions

    def percentile(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else 0.0
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


class BackgroundLoad:
    def __init__(self, router: str, threads: int = 2, max_tokens: int = 16, seed: int = 0) -> None:
        self.router = router
        self.max_tokens = max_tokens
        self.summary = LoadSummary()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(seed + i,), daemon=True) for i in range(threads)
        ]
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 120.0) -> LoadSummary:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self.summary.seconds = time.monotonic() - self._started
        return self.summary

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with GenerationClient(self.router) as client:
            while not self._stop.is_set():
                prompt = [rng.randrange(100, 30000) for _ in range(rng.randrange(4, 48))]
                params = SamplingParams(
                    temperature=1.0, max_tokens=self.max_tokens, seed=rng.randrange(1 << 30)
                )
                with self._lock:
                    self.summary.sent += 1
                try:
                    result = client.generate(prompt, params, n=2, timeout=300)
                except MixedVersionError:
                    with self._lock:
                        self.summary.mixed_versions += 1
                    continue
                except GenerationError as exc:
                    with self._lock:
                        self.summary.errors[exc.code.name] += 1
                    continue
                with self._lock:
                    self.summary.completed += 1
                    self.summary.per_version[result.policy_version] += 1
                    self.summary.latencies.append(result.latency_seconds)
                    self.summary.output_tokens += sum(len(s.token_ids) for s in result.samples)
