"""paged_attention_triton(..., new=NewTokens(...)) — rotary and the KV store folded into the decode
attention launch — against the two launches it replaces: rotary_store_kv_triton, then
paged_attention_triton on the rotated query.

Without a q/k norm the fold runs the same float operations on the same values (the rotate-half
partner is loaded instead of sliced; negating a rounded product is exact), so the attention output
and both caches are compared in bytes, for every schedule and with the partition fold on and off.
With the norm, each head's sum of squares is two half sums as in the separate kernel; in the
interpreter (NumPy's pairwise sum, where the zeros of the other half add exactly) that gives the
same bits too, which this test asserts. Compiled for a GPU, both kernels round like PyTorch's
rotation (tests/gpu/test_kernels_gpu.py, with rotary's FP fusion off: kernels/rotary_triton.py).
"""

from __future__ import annotations

import pytest
import torch
from paged_batch import make_paged_batch

from epochserve.kernels.paged_attention_triton import NewTokens, paged_attention_triton
from epochserve.kernels.rotary import QKNorm, rope_cos_sin_cache, rope_inv_freq
from epochserve.kernels.rotary_kv_cache_triton import rotary_store_kv_triton


def decode_case(
    seqs: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    seed: int,
    device="cpu",
):
    """A decode batch (one new token per sequence, at position seq_len - 1): the paged batch, the
    unrotated q/k/v as views of one merged qkv, the positions, the slots and the RoPE table."""
    block_size = 16
    batch = make_paged_batch(
        [(n, 1) for n in seqs], num_heads, num_kv_heads, head_dim, block_size, dtype, device, seed=seed
    )
    gen = torch.Generator().manual_seed(seed + 1)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(len(seqs), width, generator=gen).to(dtype).to(device)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    views = [x.view(len(seqs), -1, head_dim) for x in (q, k, v)]
    positions = batch.seq_lens.long() - 1
    pages = batch.block_tables.long().gather(1, (positions // block_size)[:, None])[:, 0]
    slots = pages * block_size + positions % block_size
    cos_sin = rope_cos_sin_cache(rope_inv_freq(head_dim, 10000.0, "default"), 8192).to(device)
    return batch, views, positions, slots, cos_sin


def qk_norm_of(head_dim: int, dtype: torch.dtype, device="cpu") -> QKNorm:
    gen = torch.Generator().manual_seed(head_dim)
    q_weight = (1 + 0.3 * torch.randn(head_dim, generator=gen)).to(dtype).to(device)
    k_weight = (1 + 0.3 * torch.randn(head_dim, generator=gen)).to(dtype).to(device)
    return QKNorm(q_weight, k_weight, 1e-6)


def run_both(
    seqs, num_heads, num_kv_heads, head_dim, dtype, *, norm: bool, seed: int = 0, slots_to_skip=(),
    device="cpu", **kw,
):  # fmt: skip
    """(separate launches, folded): each (output, key cache, value cache), from the same inputs."""
    batch, (q, k, v), positions, slots, cos_sin = decode_case(
        seqs, num_heads, num_kv_heads, head_dim, dtype, seed, device
    )
    for i in slots_to_skip:
        slots[i] = -1
    qk_norm = qk_norm_of(head_dim, dtype, device) if norm else None
    bounds = dict(max_query_len=1, max_seq_len=batch.max_seq_len, **kw)
    results = []
    for folded in (False, True):
        key_cache, value_cache = batch.key_cache.clone(), batch.value_cache.clone()
        query, new = q, None
        if folded:
            new = NewTokens(k, v, positions, cos_sin, slots, qk_norm)
        else:
            query = rotary_store_kv_triton(
                q, k, v, positions, cos_sin, key_cache, value_cache, slots, qk_norm
            )
        out = paged_attention_triton(
            query, key_cache, value_cache, batch.block_tables, batch.seq_lens, batch.query_start_loc, 0.125,
            new=new, **bounds,
        )  # fmt: skip
        results.append((out, key_cache, value_cache))
    return results


def assert_same_bytes(separate, folded) -> None:
    for name, a, b in zip(("output", "key cache", "value cache"), separate, folded, strict=True):
        assert torch.equal(a, b), f"{name} differs: max |Δ| {(a.float() - b.float()).abs().max().item():.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "qk-norm"])
@pytest.mark.parametrize(
    ("schedule", "kw"),
    [
        ("split", dict(fixed_split_tokens=64)),  # the new position in the last of several partitions
        ("split-reduce", dict(fixed_split_tokens=64, fold=False)),
        ("loop", dict(fixed_split_tokens=64)),
        ("single", dict(fixed_split_tokens=512)),
    ],
)
def test_the_fold_gives_the_separate_launches_bytes(dtype, norm, schedule, kw) -> None:
    seqs = [200, 1, 64, 65, 130]  # a first token, block and partition edges
    if schedule == "loop":  # the loop schedule runs decode when the partial states would be too big
        import epochserve.kernels.paged_attention_triton as attention

        kw = dict(kw)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(attention, "_MAX_PARTIAL_BYTES", 0)
            separate, folded = run_both(seqs, 8, 2, 64, dtype, norm=norm, **kw)
    else:
        separate, folded = run_both(seqs, 8, 2, 64, dtype, norm=norm, **kw)
    assert_same_bytes(separate, folded)


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_dim"), [(4, 4, 96), (6, 1, 128)], ids=["mha-d96", "mqa-d128"]
)
def test_odd_groups_and_head_sizes(num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    """A head_dim that is not a power of two (padded columns) and a group of 6 (padded rows)."""
    separate, folded = run_both(
        [90, 17, 33], num_heads, num_kv_heads, head_dim, torch.float32, norm=True, seed=3
    )
    assert_same_bytes(separate, folded)


def test_a_negative_slot_stores_nothing() -> None:
    """A CUDA-graph padding row owns no slot: the fold stores nothing for it, as the separate
    kernel does (the row then attends over what the slot held before, in both)."""
    separate, folded = run_both(
        [40, 70], 8, 2, 64, torch.float32, norm=False, slots_to_skip=(0,), fixed_split_tokens=64
    )
    assert_same_bytes(separate, folded)


def test_refuses_prefill_and_mismatched_shapes() -> None:
    batch, (q, k, v), positions, slots, cos_sin = decode_case([30], 8, 2, 64, torch.float32, 0)
    args = (
        q,
        batch.key_cache,
        batch.value_cache,
        batch.block_tables,
        batch.seq_lens,
        batch.query_start_loc,
        0.125,
    )
    with pytest.raises(ValueError, match="decode only"):
        paged_attention_triton(
            *args, max_query_len=4, max_seq_len=30, new=NewTokens(k, v, positions, cos_sin, slots)
        )
    with pytest.raises(ValueError, match="do not fit"):
        wrong = NewTokens(k[:, :1], v[:, :1], positions, cos_sin, slots)
        paged_attention_triton(*args, max_query_len=1, max_seq_len=30, new=wrong)
    with pytest.raises(ValueError, match="norm weights"):
        bad_norm = QKNorm(torch.ones(32), torch.ones(32), 1e-6)
        paged_attention_triton(
            *args, max_query_len=1, max_seq_len=30, new=NewTokens(k, v, positions, cos_sin, slots, bad_norm)
        )
