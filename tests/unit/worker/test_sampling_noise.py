"""Counter-based Gumbel noise: deterministic per key, independent of the batch, Gumbel-distributed."""

import math

import torch

from epochserve.worker.engine.sampling_noise import (
    NOISE_BITS,
    gumbel_noise,
    noise_key,
    uniform_bits,
    uniforms,
)


def test_a_row_depends_only_on_its_key():
    keys = torch.tensor([noise_key(7, 0, p) for p in range(5)])
    batch = gumbel_noise(keys, 1000)
    alone = gumbel_noise(keys[3:4], 1000)
    assert torch.equal(batch[3], alone[0])
    assert not torch.equal(batch[0], batch[1])


def test_keys_separate_seed_sample_and_position():
    keys = {noise_key(s, i, p) for s in range(3) for i in range(3) for p in range(3)}
    assert len(keys) == 27
    assert all(0 <= k < 2**63 for k in keys)


def test_noise_is_standard_gumbel():
    noise = gumbel_noise(torch.tensor([noise_key(1, 0, p) for p in range(50)]), 20000).double()
    euler_gamma = 0.5772156649
    assert abs(noise.mean().item() - euler_gamma) < 0.01
    assert abs(noise.var().item() - math.pi**2 / 6) < 0.02
    assert torch.isfinite(noise).all()


def test_every_uniform_lies_strictly_inside_zero_one_so_no_noise_is_infinite():
    # The extreme bit patterns: with one more bit, the top one rounded to 1.0 and its noise to +inf,
    # which made that token win the draw whatever its probability (outside the support included).
    bits = torch.tensor([0, 1, 2 ** (NOISE_BITS - 1), 2**NOISE_BITS - 2, 2**NOISE_BITS - 1])
    values = uniforms(bits)
    assert torch.equal(values.double(), (bits.double() + 0.5) / 2**NOISE_BITS)  # exact
    assert (values > 0).all() and (values < 1).all()
    assert torch.isfinite(-torch.log(-torch.log(values))).all()
    drawn = uniform_bits(torch.tensor([noise_key(5, 0, p) for p in range(8)]), 100_000)
    assert drawn.min() >= 0 and drawn.max() < 2**NOISE_BITS
