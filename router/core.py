"""RouterCore: the parts one router process shares among its requests, wired together.

Created by router/server.py (or by tests) on the router's event loop; everything in it is used
from that loop only, so nothing here needs a lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from epochserve.channels import ClientTls
from epochserve.router.admission import Admission, QueueLimits
from epochserve.router.attempt import FlowState
from epochserve.router.audit import AuditLog
from epochserve.router.dispatch import Dispatcher
from epochserve.router.metrics import RouterMetrics
from epochserve.router.policies import Policy
from epochserve.router.registry import WorkerRegistry
from epochserve.router.waiting import Changes


@dataclass
class RouterCore:
    router_id: str
    admission: Admission
    registry: WorkerRegistry
    dispatcher: Dispatcher
    metrics: RouterMetrics
    max_attempts: int  # worker calls one request may start (retries included)
    audit: AuditLog | None = None
    inflight: dict[str, FlowState] = field(default_factory=dict)  # by request id
    is_accepting: bool = True  # False once shutdown began

    @classmethod
    def build(
        cls,
        router_id: str,
        policy: Policy,
        limits: QueueLimits,
        dial: Callable[[str], grpc.aio.Channel],
        *,
        max_attempts: int = 3,
        max_seqs_per_worker: int = 0,
        metrics: RouterMetrics | None = None,
        audit: AuditLog | None = None,
        use_session_link: bool = True,
        link_tls: ClientTls | None = None,
    ) -> RouterCore:
        metrics = metrics or RouterMetrics()
        changes = Changes()
        admission = Admission(limits, changes, on_depth=metrics.set_queue_depth)
        registry = WorkerRegistry(
            changes,
            dial,
            max_seqs_per_worker=max_seqs_per_worker,
            on_closed=metrics.worker_closed,
            use_session_link=use_session_link,
            link_tls=link_tls,
        )
        dispatcher = Dispatcher(admission, registry, policy, limits.max_wait_seconds)
        return cls(router_id, admission, registry, dispatcher, metrics, max_attempts, audit)

    def switch_to(self, version: int) -> bool:
        """Admission moves to `version` (see Admission.switch_to). Every switch after the first
        (the version found at start) counts as a rollout seen."""
        previous = self.admission.version
        switched = self.admission.switch_to(version)
        if switched:
            self.metrics.policy_version.set(version)
            if previous is not None:
                self.metrics.rollouts_seen.inc()
        return switched
