"""WeightSource: a read-only view of one checkpoint tensor from which a rank reads only its slice.

Backed either by a safetensors slice (bytes outside the slice are never read) or by an in-memory
tensor (weight updates from a trainer). Layers' weight loaders take one of these.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class WeightSource(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype_name(self) -> str:
        """safetensors' name of the element type: F32, BF16, F16, ..."""
        ...

    def read(self, dim: int | None = None, start: int = 0, length: int | None = None) -> torch.Tensor:
        """The whole tensor (dim None) or `length` entries from `start` along dim 0 or 1."""
        ...


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}


class TensorSource:
    """A WeightSource over a tensor already in memory."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor = tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._tensor.shape)

    @property
    def dtype_name(self) -> str:
        return _SAFETENSORS_DTYPES.get(self._tensor.dtype, str(self._tensor.dtype))

    def read(self, dim: int | None = None, start: int = 0, length: int | None = None) -> torch.Tensor:
        if dim is None:
            return self._tensor
        return self._tensor.narrow(dim, start, self._tensor.shape[dim] - start if length is None else length)


class SafetensorsSource:
    """A WeightSource over `safe_open(...).get_slice(name)`: reads only the bytes asked for."""

    def __init__(self, safe_slice: Any) -> None:
        self._slice = safe_slice

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._slice.get_shape())

    @property
    def dtype_name(self) -> str:
        return str(self._slice.get_dtype())

    def read(self, dim: int | None = None, start: int = 0, length: int | None = None) -> torch.Tensor:
        if dim is None:
            return self._slice[:]
        stop = self.shape[dim] if length is None else start + length
        if dim == 0:
            return self._slice[start:stop]
        if dim == 1:
            return self._slice[:, start:stop]
        raise ValueError(f"slicing along dim {dim} is not supported")
