"""LoadtestConfig: everything one `epochctl loadtest` run needs, validated on construction.

The CLI (app/cli/loadtest_cmd.py) maps its flags onto these fields; bench/soak.py
builds one directly. Times are seconds, rates requests per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from epochserve.errors import ConfigError, InvalidRequestError
from epochserve.proto.convert import OutputMode
from epochserve.sampling import SamplingParams

LoopMode = Literal["closed", "open"]
DrainName = Literal["finish", "abort", "overlap"]


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """How requests are sent: closed loop (`concurrency` callers, each sends when its last ended) or
    open loop (Poisson arrivals at `rate`, whatever is in flight); bounded by time and/or count."""

    concurrency: int | None = None  # closed loop
    rate: float | None = None  # open loop, mean requests per second
    duration_seconds: float | None = None  # stop sending after this long
    num_requests: int | None = None  # stop sending after this many
    max_in_flight: int = 10_000  # open loop: arrivals beyond this are skipped (and counted)
    request_timeout_seconds: float = 300.0  # deadline of each request
    drain_timeout_seconds: float = 330.0  # after sending stops, how long in-flight requests may take
    temperature: float = 1.0
    top_p: float = 1.0
    ignore_eos: bool = True  # synthetic output lengths are exact only when EOS cannot end a sample
    seed: int = 0  # arrivals (open loop); the workload has its own
    # FINAL: one message per sample at its end (TTFT is then the time to the first whole sample,
    # and there are no inter-token gaps to measure)
    output_mode: OutputMode = OutputMode.STREAM

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ConfigError("give exactly one of --concurrency (closed loop) or --rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"--rate must be > 0, got {self.rate}")
        if self.duration_seconds is None and self.num_requests is None:
            raise ConfigError("bound the run with --duration and/or --num-requests")
        if self.duration_seconds is not None and not self.duration_seconds > 0:
            raise ConfigError(f"--duration must be > 0, got {self.duration_seconds}")
        if self.num_requests is not None and self.num_requests < 1:
            raise ConfigError(f"--num-requests must be >= 1, got {self.num_requests}")
        if self.max_in_flight < 1 or self.request_timeout_seconds <= 0 or self.drain_timeout_seconds < 0:
            raise ConfigError("max in flight must be >= 1, timeouts > 0")
        try:
            SamplingParams(temperature=self.temperature, top_p=self.top_p)
        except InvalidRequestError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def mode(self) -> LoopMode:
        return "closed" if self.concurrency is not None else "open"


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """Soak mode: start a rollout every `rollout_every_seconds` while the load runs, through the
    Admin API, cycling through `sources` and alternating `drains`, with versions above every
    version the cluster has seen. Each version's checkpoint is prepared under `publish_dir`
    (soak.py), which must be readable by every worker at the same path."""

    admin: str
    token: str
    sources: tuple[Path, ...]
    rollout_every_seconds: float
    publish_dir: Path
    drains: tuple[DrainName, ...] = ("finish", "abort")
    tls: bool = False
    ca_file: Path | None = None
    rollout_timeout_seconds: float = 300.0  # StartRollout → DONE or ABORTED
    drain_deadline_seconds: float | None = None  # each rollout's drain deadline (None: none)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("soak mode needs at least one --source checkpoint")
        missing = [str(s) for s in self.sources if not s.is_dir()]
        if missing:
            raise ConfigError(f"--source is not a directory: {', '.join(missing)}")
        if not self.rollout_every_seconds > 0:
            raise ConfigError(f"--rollout-every must be > 0, got {self.rollout_every_seconds}")
        if not self.drains:
            raise ConfigError("soak mode needs at least one drain policy")


@dataclass(frozen=True, slots=True)
class LoadtestConfig:
    """One run: where to send, what, how, where the report goes, and optionally soak rollouts."""

    target: str  # HOST:PORT of a router's Generation service
    plan: LoadPlan
    out_dir: Path  # report.json, report.md, *.png
    soak: SoakConfig | None = None
    policy_poll_seconds: float = 0.1  # GetPolicy on the target, to observe pins and DONE
    strict_groups: bool = False  # user-defined groups split across versions count as violations
    bucket_seconds: float = 1.0  # resolution of throughput over time
    progress: bool = True  # live progress on stderr
    labels: dict[str, str] = field(default_factory=dict)  # free-form, copied into the report

    def __post_init__(self) -> None:
        if ":" not in self.target:
            raise ConfigError(f"--target must be HOST:PORT, got {self.target!r}")
        if not self.policy_poll_seconds > 0 or not self.bucket_seconds > 0:
            raise ConfigError("poll interval and bucket width must be > 0")
