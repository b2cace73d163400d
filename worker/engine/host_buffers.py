"""Host-side packing of a step's integer inputs: one numpy pass, one pinned buffer, one copy."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import torch


def pack_int64(parts: Sequence[Iterable[int]], count: int) -> torch.Tensor:
    """The concatenation of `parts` (`count` ints in all) as an int64 CPU tensor."""
    return torch.from_numpy(np.fromiter(itertools.chain.from_iterable(parts), dtype=np.int64, count=count))


def padded_rows(rows: Sequence[Sequence[int]], width: int, fill: int) -> Iterable[int]:
    """Row-major ints of `rows`, each padded to `width` with `fill` (block tables)."""
    return itertools.chain.from_iterable(
        itertools.chain(row, itertools.repeat(fill, width - len(row))) for row in rows
    )


class PinnedStaging:
    """A reusable pinned host buffer: host → device copies that neither allocate nor block."""

    def __init__(self, device: torch.device, initial: int = 1 << 16) -> None:
        self.device = device
        self._buffer = self._allocate(initial)
        self._copied: torch.cuda.Event | None = None  # the last copy out of the buffer

    def _allocate(self, size: int) -> torch.Tensor:
        return torch.empty(size, dtype=torch.int64, pin_memory=self.device.type == "cuda")

    def to_device(self, values: torch.Tensor) -> torch.Tensor:
        """Copy int64 `values` to the device through the pinned buffer (asynchronously on CUDA)."""
        if self.device.type != "cuda":
            return values
        if self._copied is not None:
            self._copied.synchronize()  # never overwrite bytes a copy has not read yet
        if values.numel() > self._buffer.numel():
            self._buffer = self._allocate(2 * values.numel())
        staged = self._buffer[: values.numel()]
        staged.copy_(values)
        on_device = staged.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return on_device
