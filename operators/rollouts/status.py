"""PolicyRollout status from what the Admin API reports (pure: no clock unless passed in).

Phases: Pending (not yet accepted by the Admin API), then a mirror of the coordinator's record —
Staging, Committed, Done or Aborted — or Rejected when the Admin API will never accept it.
Conditions: Accepted, Committed and Complete, each with observedGeneration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epochserve.controlplane.store.records import RolloutPhase
from epochserve.operators.conditions import Condition, ConditionStatus, set_condition
from epochserve.operators.rollouts.admin import RolloutSnapshot, WorkerProgress

Status = dict[str, Any]

PHASE_NAMES: dict[RolloutPhase, str] = {
    RolloutPhase.STAGING: "Staging",
    RolloutPhase.COMMITTED: "Committed",
    RolloutPhase.DONE: "Done",
    RolloutPhase.ABORTED: "Aborted",
}
# Phases after which nothing about this PolicyRollout changes any more.
FINAL_PHASES = frozenset({"Done", "Aborted", "Rejected"})


def _conditions(previous: Mapping[str, Any]) -> list[Condition]:
    return list(previous.get("conditions") or [])


def _with(
    conditions: list[Condition],
    entries: list[tuple[str, ConditionStatus, str, str]],
    generation: int,
    now: str,
) -> list[Condition]:
    for type_, status, reason, message in entries:
        conditions = set_condition(conditions, type_, status, reason, message, generation, now)
    return conditions


def _summary(phase: str, message: str, generation: int, conditions: list[Condition]) -> Status:
    return {"phase": phase, "message": message, "observedGeneration": generation, "conditions": conditions}


def pending_status(previous: Mapping[str, Any], generation: int, message: str, now: str) -> Status:
    """Before the Admin API accepted the rollout (or while another rollout blocks it)."""
    conditions = _with(_conditions(previous), [("Accepted", "Unknown", "Pending", message)], generation, now)
    return _summary("Pending", message, generation, conditions)


def rejected_status(previous: Mapping[str, Any], generation: int, message: str, now: str) -> Status:
    """The Admin API refused the rollout for good; nothing was started, nothing will be."""
    entries: list[tuple[str, ConditionStatus, str, str]] = [
        ("Accepted", "False", "Rejected", message),
        ("Committed", "False", "Rejected", message),
        ("Complete", "False", "Rejected", message),
    ]
    conditions = _with(_conditions(previous), entries, generation, now)
    return _summary("Rejected", message, generation, conditions)


def _worker_entry(worker: WorkerProgress) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": worker.worker_id, "state": worker.state}
    if worker.staged_version is not None:
        entry["stagedVersion"] = worker.staged_version
    if worker.serving_version is not None:
        entry["servingVersion"] = worker.serving_version
    if worker.message:
        entry["message"] = worker.message
    return entry


def mirrored_status(
    previous: Mapping[str, Any], generation: int, snapshot: RolloutSnapshot, now: str
) -> Status:
    """Status mirroring a rollout record: phase, per-worker progress, conditions."""
    phase = PHASE_NAMES[snapshot.phase]
    committed: ConditionStatus = "True" if snapshot.phase.is_committed else "False"
    complete: ConditionStatus = "True" if snapshot.phase is RolloutPhase.DONE else "False"
    message = snapshot.message or f"version {snapshot.version} {phase.lower()}"
    entries: list[tuple[str, ConditionStatus, str, str]] = [
        ("Accepted", "True", "Started", f"the Admin API runs version {snapshot.version}"),
        ("Committed", committed, phase, message),
        ("Complete", complete, phase, message),
    ]
    return {
        "phase": phase,
        "message": message,
        "observedGeneration": generation,
        "workers": [_worker_entry(w) for w in sorted(snapshot.workers, key=lambda w: w.worker_id)],
        "conditions": _with(_conditions(previous), entries, generation, now),
    }
