"""RouterMetrics: the router's Prometheus metrics, on a registry of its own (no global state).

Names (counters get Prometheus' `_total` suffix):
    epochserve_router_requests_total{version,status}     requests ended, by pinned version and gRPC status
    epochserve_router_tokens_total{version,status}       generated tokens forwarded, by the request's end
    epochserve_router_queue_depth{version}               requests waiting for a version (or a worker of it)
    epochserve_router_inflight_requests{worker}          requests this router has on each worker
    epochserve_router_ttft_seconds                       arrival at the router → first token forwarded
                                                         (OUTPUT_MODE_FINAL: → the first whole sample)
    epochserve_router_inter_token_seconds                gap between a sample's chunks, per token
                                                         (STREAM only: a FINAL sample is one message)
    epochserve_router_request_seconds                    arrival → end, whatever the status
    epochserve_router_retries_total{reason}              requests started again (worker_lost, retired, ...)
    epochserve_router_rollouts_seen_total                committed versions admission switched to
    epochserve_router_policy_version                     the version new requests pin to
`version` is "none" for requests that ended before being pinned (invalid, queue full at the hold).
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_GAP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
NO_VERSION = "none"


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "epochserve_router_requests", "Requests ended, by pinned policy version and gRPC status",
            ["version", "status"], registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "epochserve_router_tokens", "Generated tokens forwarded to clients, by version and final status",
            ["version", "status"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "epochserve_router_queue_depth", "Requests waiting for a policy version or a worker serving it",
            ["version"], registry=r,
        )  # fmt: skip
        self.inflight = Gauge(
            "epochserve_router_inflight_requests", "Requests in flight on each worker", ["worker"], registry=r
        )
        self.ttft = Histogram(
            "epochserve_router_ttft_seconds", "Arrival at the router to the first token forwarded",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inter_token = Histogram(
            "epochserve_router_inter_token_seconds", "Gap between chunks of a sample, per token",
            buckets=_TOKEN_GAP_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "epochserve_router_request_seconds", "Arrival at the router to the end of the response",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "epochserve_router_retries", "Requests started again, by reason", ["reason"], registry=r
        )
        self.rollouts_seen = Counter(
            "epochserve_router_rollouts_seen", "Committed policy versions admission switched to", registry=r
        )
        self.policy_version = Gauge(
            "epochserve_router_policy_version", "The policy version new requests pin to", registry=r
        )

    def set_queue_depth(self, version: int, depth: int) -> None:
        self.queue_depth.labels(str(version)).set(depth)

    def request_ended(self, version: int | None, status: str, num_tokens: int, seconds: float) -> None:
        label = NO_VERSION if version is None else str(version)
        self.requests.labels(label, status).inc()
        if num_tokens:
            self.tokens.labels(label, status).inc(num_tokens)
        self.request_seconds.observe(seconds)

    def worker_closed(self, worker_id: str) -> None:
        """Drop the per-worker series of a worker that left."""
        with contextlib.suppress(KeyError):
            self.inflight.remove(worker_id)
