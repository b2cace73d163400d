"""Join the control plane: register this worker in etcd and hand rollouts to a RolloutAgent.

Registration happens once the Worker service listens (routers connect to the advertised address).
The worker registers with the version and fingerprint of the weights it loaded; when the cluster's
committed epoch is newer, the control plane first has it stage and swap that version (catch-up),
and only then does it become READY for routers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from epochserve.controlplane.participants.threaded import SyncWorkerParticipant
from epochserve.controlplane.participants.worker import WorkerIdentity
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.worker.rollout.agent import RolloutAgent
from epochserve.worker.serving.engine_loop import EngineLoop

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ControlPlaneSettings:
    etcd: EtcdConfig
    cluster: str = "default"
    advertise_address: str = ""  # HOST:PORT routers dial; default: the listen host and port
    lease_ttl: int = 10  # seconds without keepalive before the worker's registration expires


async def join_control_plane(
    settings: ControlPlaneSettings, loop: EngineLoop, worker_id: str, listen_address: str, tp_size: int
) -> tuple[SyncWorkerParticipant, RolloutAgent]:
    """Register (blocking until registered, or TimeoutError) and install the agent as a loop hook."""
    engine = loop.engine
    fingerprint = await asyncio.wrap_future(loop.call(lambda e: e.weights.fingerprint()))
    identity = WorkerIdentity(
        worker_id=worker_id,
        address=settings.advertise_address or listen_address,
        tp_size=tp_size,
        capacity=engine.config.max_num_seqs,
    )
    participant = SyncWorkerParticipant(
        settings.etcd,
        settings.cluster,
        identity,
        serving_version=engine.policy_version,
        fingerprint=fingerprint,
        lease_ttl=settings.lease_ttl,
    )
    await asyncio.to_thread(participant.start)
    agent = RolloutAgent(participant, worker_id)
    loop.hooks.append(agent)
    logger.info(
        "registered as %s in cluster %s (serving v%d)", worker_id, settings.cluster, engine.policy_version
    )
    return participant, agent
