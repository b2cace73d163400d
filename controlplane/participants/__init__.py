"""Participant clients: how workers and routers take part in rollouts (see worker.py, router.py).

Workers use `WorkerParticipant` (asyncio) or `SyncWorkerParticipant` (threads); routers use
`RouterParticipant` / `SyncRouterParticipant`. docs/controlplane.md walks through the protocol.
"""
