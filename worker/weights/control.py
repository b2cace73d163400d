"""WeightsControl: rank 0's handle on the weights of every TP rank of its worker.

The rollout agent and the worker's registration talk to this, never to a rank's updater. Each
action is a weight command (worker/tp/commands.py): rank 0 broadcasts it to the followers, then runs
it on its own RankWeightUpdater, so every rank stages, swaps and drops the same version in the same
order (the ranks' staging threads meet in one verification collective; swaps happen between the
same two steps). The results (is_staging, wait, take_result) are rank 0's: every rank reaches the
same verdict in that collective.
"""

from __future__ import annotations

from epochserve.worker.tp.commands import (
    CommandChannel,
    DropWeights,
    FingerprintWeights,
    StageWeights,
    SwapWeights,
    WeightCommand,
)
from epochserve.worker.weights.staging import StagedWeights
from epochserve.worker.weights.updater import RankWeightUpdater, StageResult


def run_weight_command(updater: RankWeightUpdater, command: WeightCommand) -> str:
    """What a weight command does on one rank; the live fingerprint for a swap or a fingerprint."""
    match command:
        case StageWeights():
            updater.begin_stage(
                command.version, command.source, command.manifest_checksum, command.broadcast_rank_base
            )
        case SwapWeights():
            return updater.swap(command.version)
        case DropWeights():
            updater.drop()
        case FingerprintWeights():
            return updater.fingerprint()
    return ""


class WeightsControl:
    def __init__(self, updater: RankWeightUpdater, channel: CommandChannel | None = None) -> None:
        self._updater = updater
        self._channel = channel  # rank 0 of a TP group: where the followers hear each command

    def stage(
        self, version: int, source: str, manifest_checksum: str | None, broadcast_rank_base: int | None = None
    ) -> None:
        """Every rank starts staging `version` in the background (see RankWeightUpdater.begin_stage)."""
        self._run(StageWeights(version, source, manifest_checksum, broadcast_rank_base))

    def swap(self, version: int) -> str:
        """Every rank swaps the staged `version` live now; returns the live weights' fingerprint."""
        return self._run(SwapWeights(version))

    def drop(self) -> None:
        """Every rank abandons the staged or staging version."""
        self._run(DropWeights())

    def fingerprint(self) -> str:
        """The live weights' fingerprint, over every rank."""
        return self._run(FingerprintWeights())

    @property
    def is_staging(self) -> bool:
        return self._updater.is_staging

    def wait(self, timeout: float | None = None) -> StageResult | None:
        """The staging's result once it is done (None while it runs)."""
        return self._updater.wait(timeout)

    def verified(self) -> StagedWeights | None:
        """Rank 0's verified staged version (every rank reached the same verdict), if any."""
        return self._updater.verified()

    def take_result(self) -> StageResult | None:
        """The finished staging's result, once (None while running or when nothing is pending)."""
        return self._updater.take_result()

    @property
    def prefer_device(self) -> bool:
        """Whether stage() puts a version in device twins when memory allows (else pinned host
        memory); benchmarks compare the two."""
        return self._updater.prefer_device

    @prefer_device.setter
    def prefer_device(self, value: bool) -> None:
        self._updater.prefer_device = value

    def _run(self, command: WeightCommand) -> str:
        if self._channel is not None:
            self._channel.send(command)
        return run_weight_command(self._updater, command)
