"""Counter-based sampling noise: the same numbers on any device, for any batch, after any preemption.

Each sampled position has a 63-bit key derived from (request seed, sample index, output position):
a sequence's base key hashes (seed, sample index) once (`sequence_key`, blake2b), and a position's
key mixes the base with the position (`position_keys`, vectorized over a batch: no hash per row per
step on the host). The noise of token t at that position is a hash of (key, t). The hash
(splitmix64's finalizer) is plain 64-bit integer arithmetic, vectorized over [rows, vocab], so CPU and
GPU compute the very same noise, one row never depends on another, and no generator state is kept.

The draw is an exponential race, written as Gumbel-max: the token maximizing
logprob + Gumbel(key, token) is distributed exactly as softmax(logprobs).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
_GOLDEN_U64, _MIX1_U64, _MIX2_U64 = (c % (1 << 64) for c in (_GOLDEN, _MIX1, _MIX2))


def sequence_key(seed: int, sample_index: int) -> int:
    """A sample's 64-bit base key: a hash of (request seed, sample index), computed once."""
    data = seed.to_bytes(8, "little") + sample_index.to_bytes(8, "little")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def position_keys(bases: list[int], positions: list[int]) -> list[int]:
    """63-bit keys for rows (base key, output position): splitmix64's finalizer of base + position x
    golden ratio, in numpy's wrapping uint64 arithmetic, for the whole batch at once."""
    x = np.array(bases, dtype=np.uint64) + np.array(positions, dtype=np.uint64) * np.uint64(_GOLDEN_U64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX1_U64)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX2_U64)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(1)).astype(np.int64).tolist()


def noise_key(seed: int, sample_index: int, position: int) -> int:
    """The 63-bit key of one (request seed, sample, output position)."""
    return position_keys([sequence_key(seed, sample_index)], [position])[0]


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic on signed values)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer; int64 products wrap modulo 2^64 on every device."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


# Bits of uniform noise per token. (bits + 0.5) / 2^23 is exact in fp32 and lies strictly inside
# (0, 1); with 24 bits, bits + 0.5 needs 25 and the top value rounded to 1.0, whose noise is +inf:
# that token won the race wherever it was, inside the processed support or not.
NOISE_BITS = 23


def uniform_bits(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, vocab] int64 in [0, 2^NOISE_BITS): the integer noise, bit-identical on every device."""
    tokens = torch.arange(vocab_size, device=keys.device, dtype=torch.int64)
    return _shift_right(_mix(keys[:, None] + tokens[None, :] * _GOLDEN), 64 - NOISE_BITS)


def uniforms(bits: torch.Tensor) -> torch.Tensor:
    """fp32 (bits + 0.5) / 2^NOISE_BITS: exact, never 0 or 1."""
    return (bits.to(torch.float32) + 0.5) * (1.0 / (1 << NOISE_BITS))


def gumbel_noise(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, vocab] fp32 Gumbel(0, 1) noise for int64 keys [rows]; always finite.

    The uniforms are exact on every device; the two logs may differ in the last bit between a CPU
    and a GPU (their libm differs), never between two calls on one device.
    """
    return -torch.log(-torch.log(uniforms(uniform_bits(keys, vocab_size))))
