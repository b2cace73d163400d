"""A decomposable tensor checksum: any disjoint pieces of a tensor, checksummed separately (on any
device, by any rank) and summed, give the checksum of the whole tensor.

For a tensor whose elements, read as unsigned integers of their width, are u_0 .. u_{n-1} in
row-major order, the checksum is the pair

    A = Σ u_i            (mod 2^64)
    B = Σ (i + 1) · u_i  (mod 2^64)

printed as 32 hex digits. Integer sums are exact and order-free, so CPU and GPU, one rank or many,
agree bit for bit. A changes with any single changed element; B also catches moved or swapped
elements, rows and tensors. It detects corruption (flipped bits, truncation, wrong tensors); it is
not a cryptographic hash and does not defend against tampering. On a GPU a Triton kernel
(kernels/checksum_triton.py) sums it in one pass at memory speed; the torch code here is its
reference and the CPU path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK = (1 << 64) - 1
_WORD_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_WORD_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


@dataclass(frozen=True, slots=True)
class Checksum:
    a: int = 0
    b: int = 0

    def __add__(self, other: Checksum) -> Checksum:
        return Checksum((self.a + other.a) & _MASK, (self.b + other.b) & _MASK)

    def hex(self) -> str:
        return f"{self.a:016x}{self.b:016x}"

    @classmethod
    def from_hex(cls, text: str) -> Checksum:
        if len(text) != 32:
            raise ValueError(f"checksum {text!r}: expected 32 hex digits")
        return cls(int(text[:16], 16), int(text[16:], 16))


def _words(values: torch.Tensor) -> torch.Tensor:
    """The elements' raw bits as non-negative int64 words (int64 elements keep their bits)."""
    size = values.element_size()
    raw = values.contiguous().view(_WORD_VIEW[size]).to(torch.int64)
    return raw & _WORD_MASK[size] if size in _WORD_MASK else raw


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _unsigned(value: int) -> int:
    return value & _MASK


def piece_checksum(values: torch.Tensor, first_index: torch.Tensor | int) -> Checksum:
    """Checksum contribution of `values`, whose elements sit at global indices `first_index + k`
    (an int for a contiguous piece) or at the given index tensor (same shape as values)."""
    if values.is_cuda and isinstance(first_index, int):
        from epochserve.kernels.checksum_triton import checksum_sums_triton

        a, b = checksum_sums_triton(values, first_index).tolist()
        return Checksum(_unsigned(a), _unsigned(b))
    return piece_checksum_torch(values, first_index)


def piece_checksum_torch(values: torch.Tensor, first_index: torch.Tensor | int) -> Checksum:
    """piece_checksum in torch ops: the reference of the Triton kernel, and the CPU path."""
    words = _words(values).flatten()
    if isinstance(first_index, int):
        weights = torch.arange(first_index + 1, first_index + 1 + words.numel(), device=words.device)
    else:
        weights = first_index.flatten().to(device=words.device, dtype=torch.int64) + 1
    # int64 arithmetic wraps modulo 2^64 (two's complement), which is exactly the mod we want.
    a = int(words.sum().item())
    b = int((weights * words).sum().item())
    return Checksum(_unsigned(a), _unsigned(b))


# Elements per pass: bounds the int64 temporaries (3 x 8 bytes per element) of a big tensor.
_CHUNK = 1 << 26


def tensor_checksum(tensor: torch.Tensor) -> Checksum:
    """The checksum of a whole tensor (torch: in chunks of at most _CHUNK elements, same result)."""
    flat = tensor.detach().contiguous().view(-1)
    if flat.is_cuda:  # the kernel needs no temporaries, so no chunks
        return piece_checksum(flat, 0)
    total = Checksum()
    for start in range(0, flat.numel(), _CHUNK):
        total = total + piece_checksum(flat[start : start + _CHUNK], start)
    return total


def row_range_checksum(rows: torch.Tensor, first_row: int, row_numel: int) -> Checksum:
    """Contribution of rows [first_row, first_row + len(rows)) of a tensor with row_numel per row."""
    return piece_checksum(rows, first_row * row_numel)


def to_int64_pair(checksum: Checksum) -> torch.Tensor:
    """For summing checksums across ranks with an int64 all-reduce (which also wraps mod 2^64)."""
    return torch.tensor([_signed(checksum.a), _signed(checksum.b)], dtype=torch.int64)


def from_int64_pair(pair: torch.Tensor) -> Checksum:
    return Checksum(_unsigned(int(pair[0])), _unsigned(int(pair[1])))
