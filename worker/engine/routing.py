"""Routing replay (SamplingParams.return_routed_experts): which experts a mixture-of-experts model
routed each position of a sequence to, kept on the host for the response and the prefix cache.

A position's routing is a [num_moe_layers, top_k] row of expert ids (layers in model order, each
layer's ids by descending weight). A sequence logs the rows of its positions in order, as they are
computed or found in the prefix cache (BlockManager keeps each cached block's rows). A logged
position is never overwritten: after a preemption the recomputed rows are dropped, so what was
returned stays what was first computed.

Steps copy routing to the host only when one of their sequences asked, in one transfer: the model
runner gathers the rows those sequences need (ModelRunner._routing_rows) and the engine logs them
when it resolves the step (PendingRouting.apply).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from epochserve.worker.models.config import ModelConfig

if TYPE_CHECKING:
    from epochserve.worker.engine.sequence import Sequence


@dataclass(frozen=True, slots=True)
class RoutingShape:
    """The shape of one position's routing, and the host dtype its ids fit in."""

    num_layers: int  # MoE layers (dense layers route nothing)
    top_k: int
    dtype: type[np.unsignedinteger] | type[np.signedinteger]

    @classmethod
    def of(cls, config: ModelConfig) -> RoutingShape | None:
        """None for a dense model."""
        moe = config.moe
        if moe is None or not moe.sparse_layers:
            return None
        dtype = np.uint16 if moe.num_experts <= 1 << 16 else np.int32  # a cached block's rows stay small
        return cls(len(moe.sparse_layers), moe.top_k, dtype)


class RoutingLog:
    """One sequence's routing of positions 0 .. length - 1: a growable [positions, layers, top_k]
    array. Rows once written never change, so views of them may be handed out."""

    def __init__(self, shape: RoutingShape, capacity: int = 64) -> None:
        self._rows = np.empty((capacity, shape.num_layers, shape.top_k), dtype=shape.dtype)
        self.length = 0

    def extend(self, start: int, rows: np.ndarray) -> None:
        """Log the routing of positions start .. start + len(rows) - 1, skipping those already logged."""
        skip = self.length - start
        if skip < 0:
            raise AssertionError(f"routing of positions {self.length}..{start - 1} was never logged")
        new = rows[skip:]
        end = self.length + len(new)
        if end > len(self._rows):
            grown = np.empty((max(end, 2 * len(self._rows)), *self._rows.shape[1:]), self._rows.dtype)
            grown[: self.length] = self._rows[: self.length]
            self._rows = grown
        self._rows[self.length : end] = new
        self.length = end

    def rows(self, start: int, stop: int) -> np.ndarray:
        """The routing of positions start .. stop - 1 (a view)."""
        if start < stop and stop > self.length:
            raise AssertionError(f"routing of position {stop - 1} asked, {self.length} logged")
        return self._rows[start:stop]


class RoutedSpan(NamedTuple):
    """Consecutive rows of a step's routing copy: those of seq's positions from first_position on."""

    seq: Sequence
    first_position: int
    num_rows: int


@dataclass(frozen=True, slots=True)
class PendingRouting:
    """A step's routing rows on their way to the host. Created by ModelRunner.execute, applied by
    the engine when it resolves the step."""

    host: torch.Tensor  # [sum of num_rows, layers, top_k] int32, on the host once `copied`
    copied: torch.cuda.Event | None
    spans: list[RoutedSpan]

    def apply(self) -> None:
        """Wait for the copy (and nothing queued after it), then log each span in its sequence."""
        if self.copied is not None:
            self.copied.synchronize()
        rows = self.host.numpy()
        offset = 0
        for seq, first, count in self.spans:
            # a sequence that ended meanwhile (stop token before a run-ahead step) logs nothing more
            if seq.routing is not None and not seq.is_finished:
                seq.routing.extend(first, rows[offset : offset + count])
            offset += count
