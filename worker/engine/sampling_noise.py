"""Counter-based sampling noise: the same numbers on any device, for any batch, after any preemption.

Each sampled position has a 63-bit key derived from (request seed, sample index, output position)
(`noise_key`); the noise of token t at that position is a hash of (key, t). The hash (splitmix64's
finalizer) is plain int64 arithmetic, vectorized over [rows, vocab], so CPU and GPU compute the very
same noise, one row never depends on another, and no generator state is kept.

The draw is an exponential race, written as Gumbel-max: the token maximizing
logprob + Gumbel(key, token) is distributed exactly as softmax(logprobs).
"""

from __future__ import annotations

import hashlib

import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def noise_key(seed: int, sample_index: int, position: int) -> int:
    """A 63-bit key for one (request seed, sample, output position)."""
    data = b"".join(x.to_bytes(8, "little") for x in (seed, sample_index, position))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


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
