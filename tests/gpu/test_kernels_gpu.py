"""Triton kernels vs their PyTorch references on CUDA in bf16 and fp16, and batch invariance in bytes.

Run: `python -m pytest -q tests/gpu/test_kernels_gpu.py` (skips without CUDA).

Tolerances, by the relative error ‖out − ref‖ / ‖ref‖ against an fp32 reference on the same
low-precision inputs: attention rounds the softmax probabilities to the input dtype before the PV
product (2**-8 relative for bf16, 2**-11 for fp16) and accumulates in fp32: bf16 < 1e-2, fp16 < 2e-3.
Elementwise kernels round at the same points as the references: within ~2 ulps of the output dtype.
Invariance checks compare raw bytes, not values.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import pytest
import torch
import torch.nn.functional as F

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))  # shared batch builder

from paged_batch import PagedBatch, make_paged_batch  # noqa: E402

from epochserve.kernels.activation import silu_and_mul_torch  # noqa: E402
from epochserve.kernels.activation_triton import silu_and_mul_triton  # noqa: E402
from epochserve.kernels.gemv_triton import MAX_ROWS, gemv_triton, silu_and_mul_gemv_triton  # noqa: E402
from epochserve.kernels.kv_cache_triton import write_kv_cache_triton  # noqa: E402
from epochserve.kernels.matmul_batch_invariant import matmul_batch_invariant  # noqa: E402
from epochserve.kernels.paged_attention import paged_attention_torch, write_kv_cache_torch  # noqa: E402
from epochserve.kernels.paged_attention_triton import (  # noqa: E402
    BATCH_INVARIANT_SPLIT_TOKENS,
    paged_attention_triton,
)
from epochserve.kernels.rmsnorm import add_rms_norm_torch, rms_norm_torch  # noqa: E402
from epochserve.kernels.rmsnorm_gemv_triton import add_rms_norm_gemv_triton  # noqa: E402
from epochserve.kernels.rmsnorm_triton import add_rms_norm_triton, rms_norm_triton  # noqa: E402
from epochserve.kernels.rotary import apply_rotary_torch, rope_cos_sin_cache, rope_inv_freq  # noqa: E402
from epochserve.kernels.rotary_kv_cache_triton import rotary_store_kv_triton  # noqa: E402
from epochserve.kernels.rotary_triton import apply_rotary_qk_triton  # noqa: E402
from epochserve.worker.weights.checksum import piece_checksum, piece_checksum_torch  # noqa: E402

DTYPES = [torch.bfloat16, torch.float16]
ATTN_TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
SPLIT = BATCH_INVARIANT_SPLIT_TOKENS


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "non-finite output"
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Elementwise kernels round where the references round; an approximate exp/rsqrt can still flip
    the last bit before a rounding, and a flipped intermediate can move the output by ~2 ulps."""
    tol = {torch.bfloat16: 2e-2, torch.float16: 2e-3}[ref.dtype]
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    )


def attend(
    batch: PagedBatch, fixed: int | None, max_query_len: int | None = None, **kw: object
) -> torch.Tensor:
    return paged_attention_triton(
        batch.query, batch.key_cache, batch.value_cache, batch.block_tables, batch.seq_lens,
        batch.query_start_loc, batch.query.shape[-1] ** -0.5,
        max_query_len=max_query_len or batch.max_query_len, max_seq_len=batch.max_seq_len,
        fixed_split_tokens=fixed, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def reference(batch: PagedBatch) -> torch.Tensor:
    seq_lens, starts = batch.reference_args()
    d = batch.query.shape[-1]
    return paged_attention_torch(
        batch.query, batch.key_cache, batch.value_cache, batch.block_tables, seq_lens, starts, d**-0.5
    )


MIXED = [(1, 1), (37, 37), (700, 5), (1300, 1), (34, 4), (300, 300), (4100, 1)]
DECODE = [(5000, 1), (1, 1), (129, 1), (2048, 1), (3000, 1), (17, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_dim", "block_size"),
    [(8, 8, 64, 16), (12, 4, 64, 32), (32, 4, 128, 16), (32, 8, 128, 16), (24, 8, 128, 32)],
)
@pytest.mark.parametrize("fixed", [None, SPLIT])
@pytest.mark.parametrize("seqs", [MIXED, DECODE], ids=["mixed", "decode"])
def test_paged_attention_matches_reference(
    dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
    fixed: int | None, seqs: list[tuple[int, int]],
) -> None:  # fmt: skip
    batch = make_paged_batch(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype, "cuda", seed=7)
    out = torch.full_like(batch.query, float("nan"))  # poisoned: every element must be written
    attend(batch, fixed, out=out)
    assert rel_err(out, reference(batch)) < ATTN_TOL[dtype]


def random_batch(n: int, seed: int) -> list[tuple[int, int]]:
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(n):
        seq_len = int(torch.randint(1, 3000, (1,), generator=gen))
        is_decode = bool(torch.rand(1, generator=gen) < 0.7)
        seqs.append((seq_len, 1 if is_decode else int(torch.randint(1, seq_len + 1, (1,), generator=gen))))
    return seqs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", [(2500, 1), (1800, 77)], ids=["decode", "extend"])
def test_paged_attention_batch_invariant_bytes(dtype: torch.dtype, target: tuple[int, int]) -> None:
    """One sequence alone, then first/last among 2, 7, 32 and 128 others (decode-only batches too,
    which take the split schedule): identical bytes for its rows every time."""
    for others in (2, 7, 32, 128):
        for decode_only in (False, True):
            rest = random_batch(others, seed=others)
            if decode_only:
                rest = [(s, 1) for s, _ in rest]
            for seqs, index in (([target, *rest], 0), ([*rest, target], others)):
                batch = make_paged_batch(seqs, 32, 8, 128, 16, dtype, "cuda", seed=11)
                alone = PagedBatch(
                    *_slice_seq(batch, index), torch.tensor([0, target[1]], dtype=torch.int32, device="cuda")
                )
                start = int(batch.query_start_loc[index])
                expected = attend(alone, SPLIT)
                got = attend(batch, SPLIT)[start : start + target[1]]
                assert same_bytes(got, expected), (others, decode_only, index)


def _slice_seq(batch: PagedBatch, i: int) -> tuple[torch.Tensor, ...]:
    start, end = int(batch.query_start_loc[i]), int(batch.query_start_loc[i + 1])
    return (batch.query[start:end], batch.key_cache, batch.value_cache, batch.block_tables[i : i + 1],
            batch.seq_lens[i : i + 1])  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_attention_chunking_and_schedule_do_not_change_bytes(dtype: torch.dtype) -> None:
    seqs = [(1500, 1500), (4000, 1), (2100, 1), (300, 1)]
    batch = make_paged_batch(seqs, 32, 8, 128, 16, dtype, "cuda", seed=12)
    full = attend(batch, SPLIT)
    for chunk_start in (700, 1024, 1499):  # the rest of the prompt as an extend chunk
        n = 1500 - chunk_start
        chunk = PagedBatch(
            batch.query[chunk_start:1500], batch.key_cache, batch.value_cache, batch.block_tables[:1],
            batch.seq_lens[:1], torch.tensor([0, n], dtype=torch.int32, device="cuda"),
        )  # fmt: skip
        assert same_bytes(attend(chunk, SPLIT), full[chunk_start:1500]), chunk_start
    decodes = PagedBatch(
        batch.query[1500:], batch.key_cache, batch.value_cache, batch.block_tables[1:], batch.seq_lens[1:],
        torch.tensor([0, 1, 2, 3], dtype=torch.int32, device="cuda"),
    )  # fmt: skip
    as_split = attend(decodes, SPLIT, max_query_len=1)
    as_loop = attend(decodes, SPLIT, max_query_len=2)
    assert same_bytes(as_split, as_loop) and same_bytes(as_split, full[1500:])
    short_alone = PagedBatch(*_slice_seq(batch, 3), torch.tensor([0, 1], dtype=torch.int32, device="cuda"))
    assert same_bytes(attend(short_alone, SPLIT), full[1502:])  # single schedule: 300 < SPLIT


def test_paged_attention_replays_in_a_cuda_graph() -> None:
    """Captured with an upper-bound max_seq_len and a fixed split, replayed on new lengths and queries:
    same bytes as an eager call on the new inputs."""
    batch = make_paged_batch([(3000, 1), (100, 1), (2000, 1), (7, 1)], 32, 8, 128, 16, torch.bfloat16, "cuda")
    out = torch.empty_like(batch.query)

    def step() -> None:
        paged_attention_triton(
            batch.query, batch.key_cache, batch.value_cache, batch.block_tables, batch.seq_lens,
            batch.query_start_loc, 128**-0.5, max_query_len=1, max_seq_len=4096, fixed_split_tokens=SPLIT,
            out=out,
        )  # fmt: skip

    step()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    # Every table row has 188 entries (pages past a sequence's own point at a spare block), so any
    # length up to 188 * 16 reads allocated memory.
    batch.seq_lens.copy_(torch.tensor([3001, 2500, 1, 600], dtype=torch.int32))
    batch.query.copy_(torch.randn_like(batch.query))
    graph.replay()
    torch.cuda.synchronize()
    assert same_bytes(out, attend(batch, SPLIT, max_query_len=1))
    assert rel_err(out, reference(batch)) < ATTN_TOL[torch.bfloat16]


@pytest.mark.parametrize("fixed", [None, SPLIT])
@pytest.mark.parametrize("num_kv_heads", [4, 8])
@pytest.mark.parametrize("num_seqs", [1, 64])
def test_folded_partitions_are_the_reduce_launch_in_bytes(
    fixed: int | None, num_kv_heads: int, num_seqs: int
) -> None:
    """The split schedule folding its partitions in-kernel (the last program to take a ticket) gives
    the reduce launch's bytes: eagerly and replayed from a graph, 200 times each with new lengths,
    at batch 1 (the W1 shape: 64-token partitions under a 4096 bound) and 64. A missing
    release/acquire would show as stale partials in some replay."""
    seqs = [(s, 1) for s, _ in random_batch(num_seqs, seed=13)]
    batch = make_paged_batch(seqs, 32, num_kv_heads, 128, 16, torch.bfloat16, "cuda", seed=14)
    folded, reduced = torch.empty_like(batch.query), torch.empty_like(batch.query)

    def step(out: torch.Tensor, fold: bool) -> None:
        paged_attention_triton(
            batch.query, batch.key_cache, batch.value_cache, batch.block_tables, batch.seq_lens,
            batch.query_start_loc, 128**-0.5, max_query_len=1, max_seq_len=4096,
            fixed_split_tokens=fixed, out=out, fold=fold,
        )  # fmt: skip

    step(folded, True)  # compile and allocate the counters outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(folded, True)
    gen = torch.Generator(device="cuda").manual_seed(15)
    most = batch.block_tables.shape[1] * 16  # table entries past a sequence's own: a spare block
    for i in range(200):
        batch.seq_lens.copy_(torch.randint(1, most + 1, (num_seqs,), generator=gen, device="cuda"))
        batch.query.copy_(torch.randn(batch.query.shape, generator=gen, device="cuda"))
        graph.replay() if i % 2 else step(folded, True)
        step(reduced, False)
        assert same_bytes(folded, reduced), i


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_cache_matches_reference(dtype: torch.dtype) -> None:
    qkv = torch.randn(300, (32 + 16) * 128, device="cuda", dtype=dtype)
    key = qkv[:, 32 * 128 : 40 * 128].view(300, 8, 128)
    value = qkv[:, 40 * 128 :].view(300, 8, 128)
    slots = torch.randperm(64 * 16, device="cuda")[:300]
    caches = [torch.randn(64, 16, 8, 128, device="cuda", dtype=dtype) for _ in range(2)]
    refs = [c.clone() for c in caches]
    write_kv_cache_torch(key, value, refs[0], refs[1], slots)
    write_kv_cache_triton(key, value, caches[0], caches[1], slots)
    assert same_bytes(caches[0], refs[0]) and same_bytes(caches[1], refs[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_norms_match_reference_and_are_row_invariant(dtype: torch.dtype) -> None:
    x = torch.randn(1000, 4096, device="cuda", dtype=dtype)
    residual = torch.randn(1000, 4096, device="cuda", dtype=dtype) * 4
    weight = torch.randn(4096, device="cuda", dtype=dtype)
    out = rms_norm_triton(x, weight, 1e-5)
    close(out, rms_norm_torch(x, weight, 1e-5))
    normed, summed = add_rms_norm_triton(x, residual, weight, 1e-5)
    ref_normed, ref_summed = add_rms_norm_torch(x, residual, weight, 1e-5)
    assert same_bytes(summed, ref_summed)
    close(normed, ref_normed)
    assert same_bytes(rms_norm_triton(x[7:8], weight, 1e-5), out[7:8])
    assert same_bytes(add_rms_norm_triton(x[3:5], residual[3:5], weight, 1e-5)[0], normed[3:5])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_and_silu_match_reference(dtype: torch.dtype) -> None:
    cache = rope_cos_sin_cache(rope_inv_freq(128, 500000.0, "llama3", 8.0), 8192).cuda()
    qkv = torch.randn(257, 48 * 128, device="cuda", dtype=dtype)
    q, k = qkv[:, : 32 * 128].view(257, 32, 128), qkv[:, 32 * 128 : 40 * 128].view(257, 8, 128)
    positions = torch.randint(0, 8192, (257,), device="cuda")
    out_q, out_k = apply_rotary_qk_triton(q, k, positions, cache)
    close(out_q, apply_rotary_torch(q, positions, cache))
    close(out_k, apply_rotary_torch(k, positions, cache))
    gate_up = torch.randn(257, 2 * 14336, device="cuda", dtype=dtype) * 3
    close(silu_and_mul_triton(gate_up), silu_and_mul_torch(gate_up))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_store_kv_is_the_two_kernels_in_bytes(dtype: torch.dtype) -> None:
    """One launch does what rotary then write_kv_cache do, with the same rounding: equal bytes."""
    cache = rope_cos_sin_cache(rope_inv_freq(128, 500000.0, "llama3", 8.0), 8192).cuda()
    qkv = torch.randn(300, 48 * 128, device="cuda", dtype=dtype)
    q, k, v = (t.view(300, -1, 128) for t in qkv.split([32 * 128, 8 * 128, 8 * 128], -1))
    positions = torch.randint(0, 8192, (300,), device="cuda")
    slots = torch.randperm(64 * 16, device="cuda")[:300]
    slots[7] = -1  # a padded graph row: rotated q, nothing stored
    caches = [torch.randn(64, 16, 8, 128, device="cuda", dtype=dtype) for _ in range(2)]
    refs = [c.clone() for c in caches]
    ref_q, ref_k = apply_rotary_qk_triton(q, k, positions, cache)
    write_kv_cache_triton(ref_k, v, refs[0], refs[1], slots)
    out_q = rotary_store_kv_triton(q, k, v, positions, cache, caches[0], caches[1], slots)
    assert same_bytes(out_q, ref_q)
    assert same_bytes(caches[0], refs[0]) and same_bytes(caches[1], refs[1])
    close(out_q, apply_rotary_torch(q, positions, cache))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_store_kv_with_the_qk_norm_is_the_norm_kernel_then_rotary(dtype: torch.dtype) -> None:
    """Qwen3's q/k RMSNorm inside the same launch: against the separate norm kernel then the
    rotary kernel, identical but where the head's sum of squares, summed in another order, tips a
    rounding of a normalized element (rare: under 1% of outputs)."""
    from epochserve.kernels.rmsnorm_triton import rms_norm_triton
    from epochserve.kernels.rotary import QKNorm

    cache = rope_cos_sin_cache(rope_inv_freq(128, 1000000.0), 8192).cuda()
    qkv = torch.randn(300, 40 * 128, device="cuda", dtype=dtype) * 4
    q, k, v = (t.view(300, -1, 128) for t in qkv.split([32 * 128, 4 * 128, 4 * 128], -1))
    norm = QKNorm(1 + torch.randn(128, device="cuda", dtype=dtype) / 4,
                  1 + torch.randn(128, device="cuda", dtype=dtype) / 4, 1e-6)  # fmt: skip
    positions = torch.randint(0, 8192, (300,), device="cuda")
    slots = torch.randperm(64 * 16, device="cuda")[:300]
    caches = [torch.zeros(64, 16, 4, 128, device="cuda", dtype=dtype) for _ in range(2)]
    refs = [c.clone() for c in caches]
    nq, nk = rms_norm_triton(q, norm.q_weight, norm.eps), rms_norm_triton(k, norm.k_weight, norm.eps)
    ref_q = rotary_store_kv_triton(nq, nk, v, positions, cache, refs[0], refs[1], slots)
    out_q = rotary_store_kv_triton(q, k, v, positions, cache, caches[0], caches[1], slots, norm)
    # Normalized elements stay below 16 (RMS 1 times weights below 2): a flipped rounding of one
    # input moves a rotated output by at most two ulps at 16 (bf16 2**-3, fp16 2**-6).
    atol = 2.0**-3 if dtype == torch.bfloat16 else 2.0**-6
    torch.testing.assert_close(out_q, ref_q, atol=atol, rtol=0)
    torch.testing.assert_close(caches[0], refs[0], atol=atol, rtol=0)
    assert (out_q != ref_q).float().mean() < 0.01 and same_bytes(caches[1], refs[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", list(range(1, MAX_ROWS + 1)))
def test_silu_and_mul_gemv_matches_the_two_step_product(dtype: torch.dtype, rows: int) -> None:
    """Against an fp64 product of the same rounded activation: fp32 accumulation of 14336 terms,
    then one rounding to the output dtype (bf16 < 1e-2, fp16 < 2e-3 relative); each row's bytes do
    not depend on the other rows."""
    gate_up = torch.randn(rows, 2 * 14336, device="cuda", dtype=dtype) * 3
    weight = torch.randn(4096, 14336, device="cuda", dtype=dtype) / 14336**0.5
    act = silu_and_mul_triton(gate_up)
    out = silu_and_mul_gemv_triton(gate_up, weight)
    assert rel_err(out, act.double() @ weight.double().T) < ATTN_TOL[dtype]
    assert same_bytes(silu_and_mul_gemv_triton(gate_up[-1:], weight), out[-1:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 6144, 4096), (1, 4096, 4096), (3, 1000, 333)])
def test_gemv_matches_linear(dtype: torch.dtype, rows: int, n: int, k: int) -> None:
    x = torch.randn(rows, k, device="cuda", dtype=dtype)
    weight = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    assert rel_err(gemv_triton(x, weight), x.double() @ weight.double().T) < ATTN_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("rows", "n", "k", "router"),
    [(1, 5120, 2048, False), (1, 128, 2048, True), (4, 6144, 4096, False), (3, 1000, 333, True)],
)
def test_add_rms_norm_gemv_matches_the_two_launches(
    dtype: torch.dtype, rows: int, n: int, k: int, router: bool
) -> None:
    """Against add_rms_norm_triton then the product: the residual sum is bit-equal; the normalized
    row differs only where the variance's summation order flips a rounding (`close`); the product
    is checked against fp64 of the kernel's own normalized row (ATTN_TOL; fp32 out: 1e-5). Each
    row's bytes do not depend on the other rows."""
    x, residual = (
        torch.randn(rows, k, device="cuda", dtype=dtype) * 3,
        torch.randn(rows, k, device="cuda", dtype=dtype),
    )
    norm_weight = torch.rand(k, device="cuda", dtype=dtype) + 0.5
    weight = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    out_dtype = torch.float32 if router else None
    out, summed, normed = add_rms_norm_gemv_triton(
        x, residual, norm_weight, 1e-6, weight, out_dtype=out_dtype, store_normed=True
    )
    ref_normed, ref_summed = add_rms_norm_triton(x, residual, norm_weight, 1e-6)
    assert normed is not None and same_bytes(summed, ref_summed)
    close(normed, ref_normed)
    tol = 1e-5 if router else ATTN_TOL[dtype]
    assert rel_err(out, normed.double() @ weight.double().T) < tol
    last = add_rms_norm_gemv_triton(x[-1:], residual[-1:], norm_weight, 1e-6, weight, out_dtype=out_dtype)[0]
    assert same_bytes(last, out[-1:])


@pytest.mark.parametrize("rows", [1, 4])
def test_the_router_product_routes_as_the_top_k_launch(rows: int) -> None:
    """add_rms_norm_route_triton at the Qwen3-30B-A3B router (128 experts, top 8, hidden 2048):
    the choice the top-k launch makes on the unrouted kernel's logits, eagerly and replayed from a
    graph 200 times on new rows. A fold that read logits before every program had stored them would
    choose differently in some replay."""
    from epochserve.kernels.moe_topk_triton import topk_route_triton
    from epochserve.kernels.rmsnorm_gemv_triton import add_rms_norm_route_triton

    x = torch.randn(rows, 2048, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn(rows, 2048, device="cuda", dtype=torch.bfloat16)
    norm_weight = torch.rand(2048, device="cuda", dtype=torch.bfloat16) + 0.5
    gate = torch.randn(128, 2048, device="cuda", dtype=torch.bfloat16) / 2048**0.5

    def route() -> tuple[torch.Tensor, ...]:
        routed = add_rms_norm_route_triton(x, residual, norm_weight, 1e-6, gate, 8, True)
        assert routed is not None
        return routed

    route()  # compile and allocate the counters outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = route()
    gen = torch.Generator(device="cuda").manual_seed(16)
    for i in range(200):
        x.copy_(torch.randn(x.shape, generator=gen, device="cuda"))
        residual.copy_(torch.randn(x.shape, generator=gen, device="cuda"))
        if i % 2:
            graph.replay()
            weights, ids, summed, normed = captured
        else:
            weights, ids, summed, normed = route()
        logits, want_summed, want_normed = add_rms_norm_gemv_triton(
            x, residual, norm_weight, 1e-6, gate, out_dtype=torch.float32, store_normed=True
        )
        want_weights, want_ids = topk_route_triton(logits, 8, True)
        # ids to the bit; the weights to fp32 rounding (the softmax's sum reduces in this kernel's
        # layout, 4 warps, where the top-k kernel's has 1)
        assert torch.equal(ids, want_ids), (i, ids, want_ids)
        torch.testing.assert_close(weights, want_weights, rtol=2e-6, atol=1e-7)
        assert same_bytes(summed, want_summed) and same_bytes(normed, want_normed), i


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_with_fp32_out_matches_fp64(dtype: torch.dtype) -> None:
    """The MoE router's product (TritonOps.linear_fp32 at one row): 16-bit products are exact in
    fp32, so only fp32 summation error remains (~sqrt(K) 2**-24 relative; bound 1e-5)."""
    x = torch.randn(1, 2048, device="cuda", dtype=dtype)
    weight = torch.randn(128, 2048, device="cuda", dtype=dtype) / 2048**0.5
    out = gemv_triton(x, weight, out_dtype=torch.float32)
    assert out.dtype == torch.float32 and rel_err(out, x.double() @ weight.double().T) < 1e-5


@pytest.mark.parametrize(
    ("dtype", "n", "k", "precision", "tol"),
    [(torch.bfloat16, 6144, 4096, "ieee", 1e-2), (torch.float16, 4096, 14336, "ieee", 2e-3),
     (torch.bfloat16, 28672, 4096, "ieee", 1e-2), (torch.float32, 32000, 4096, "ieee", 1e-5),
     (torch.float32, 32000, 4096, "tf32x3", 1e-5)],
)  # fmt: skip
def test_matmul_matches_linear_and_rows_are_bit_identical(
    dtype: torch.dtype, n: int, k: int, precision: Literal["ieee", "tf32x3"], tol: float
) -> None:
    # 16-bit: 2048 rows run the prefill tiles, slices of < 1024 rows the decode tiles (fp32: one table).
    x = torch.randn(2048 if dtype != torch.float32 else 1000, k, device="cuda", dtype=dtype)
    weight = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    bias = torch.randn(n, device="cuda", dtype=dtype) if dtype == torch.bfloat16 else None

    def mm(rows: torch.Tensor) -> torch.Tensor:
        return matmul_batch_invariant(rows, weight, bias, fp32_precision=precision)

    full = mm(x)
    ref = F.linear(x.double(), weight.double(), bias.double() if bias is not None else None)
    assert rel_err(full, ref) < tol
    for rows in (1, 3, 17, 64, 256, 999):
        assert same_bytes(mm(x[:rows]), full[:rows]), rows
    assert same_bytes(mm(x[500:501]), full[500:501])


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_lm_head_on_a_bf16_table_is_fp32_arithmetic(batch_invariant: bool) -> None:
    """TritonOps.linear_fp32 on a bf16 table (cuBLAS with fp32 output, or the batch-invariant kernel
    storing its fp32 accumulator): bf16 products are exact, so against fp64 only fp32 sums round —
    the same bound as an fp32 matmul of the upcast operands (1e-5), 1000x inside a bf16 output."""
    from epochserve.worker.layers.ops import TritonOps

    ops = TritonOps(batch_invariant=batch_invariant)
    hidden = torch.randn(300, 4096, device="cuda", dtype=torch.bfloat16)
    table = (torch.randn(32000, 4096, device="cuda") / 64).to(torch.bfloat16)
    logits = ops.linear_fp32(hidden, table)
    ref = F.linear(hidden.double(), table.double())
    assert logits.dtype == torch.float32 and rel_err(logits, ref) < 1e-5
    assert rel_err(F.linear(hidden, table), ref) > 1e-4  # what a bf16 output projection would give
    for rows in (1, 7, 64):
        if batch_invariant:
            assert same_bytes(ops.linear_fp32(hidden[:rows], table), logits[:rows]), rows
        else:
            assert rel_err(ops.linear_fp32(hidden[:rows], table), ref[:rows]) < 1e-5


def test_softmax_stats_match_reference_on_a_llama3_vocabulary() -> None:
    """The sampler's per-row statistics on CUDA (see tests/kernels/test_softmax_stats_triton.py)."""
    from epochserve.kernels.softmax_stats import softmax_stats_torch
    from epochserve.kernels.softmax_stats_triton import softmax_stats_triton

    logits = torch.randn(37, 128256, device="cuda") * 6
    logits[3, 1000:] = float("-inf")  # a filtered row
    logits[5, 77] = float("nan")
    argmax, lse, finite = softmax_stats_triton(logits)
    ref_argmax, ref_lse, ref_finite = softmax_stats_torch(logits)
    assert torch.equal(finite, ref_finite) and not finite[5]
    assert torch.equal(argmax[ref_finite], ref_argmax[ref_finite])
    torch.testing.assert_close(lse[ref_finite], ref_lse[ref_finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["log_softmax", "softmax", "argmax", "top_p_filter", "softmax_stats"])
def test_sampler_row_ops_are_row_count_invariant(op: str) -> None:
    """The batch-invariant mode keeps torch for the sampler's fp32 row ops over the vocabulary
    (docs/kernels.md): a row's bytes must not depend on how many rows share the call. torch's own
    cumsum is not (a lone row scans differently on H100, 2026-11-22), so the top-p filter runs its
    prefix sums one row per call in that mode; this checks the whole filter."""
    from epochserve.kernels.softmax_stats_triton import softmax_stats_triton
    from epochserve.worker.engine.sampler import filter_logits

    logits = torch.randn(256, 128256, device="cuda") * 5

    def top_p(t: torch.Tensor) -> torch.Tensor:
        n = t.shape[0]
        args = (torch.full((n,), 50, device="cuda"), torch.full((n,), 0.9, device="cuda"))
        return filter_logits(t, *args, torch.full((n,), 0.01, device="cuda"), batch_invariant=True)

    fn = {
        "log_softmax": lambda t: torch.log_softmax(t, dim=-1),
        "softmax": lambda t: torch.softmax(t, dim=-1),
        "argmax": lambda t: t.argmax(dim=-1),
        "top_p_filter": top_p,
        "softmax_stats": lambda t: torch.stack([x.double() for x in softmax_stats_triton(t)], dim=1),
    }[op]
    full = fn(logits)
    for rows in (1, 2, 7, 32, 128):
        assert same_bytes(fn(logits[:rows]), full[:rows]), rows


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_weight_checksum_kernel_matches_reference_bit_for_bit(dtype: torch.dtype) -> None:
    # 2**25 + 5 elements: thousands of programs, and a last one that ends mid-block
    values = torch.randn(2**25 + 5, device="cuda").to(dtype)
    reference = piece_checksum_torch(values.cpu(), 3_000_000_001)
    assert piece_checksum(values, 3_000_000_001) == reference  # dispatches to the kernel on CUDA
    # a CPU piece and a GPU piece of one tensor add up to the whole
    whole = piece_checksum_torch(values.cpu(), 0)
    assert piece_checksum_torch(values[:1000].cpu(), 0) + piece_checksum(values[1000:], 1000) == whole


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fixed", [None, SPLIT])
def test_rotary_folded_into_decode_attention_rounds_like_pytorch(
    dtype: torch.dtype, fixed: int | None
) -> None:
    """Rotary and the KV store inside the decode attention launch (EPOCHSERVE_ROTARY_ATTENTION) and
    the separate rotary_store_kv_triton, at the Qwen3-30B-A3B head shape: the stored keys and
    values, and the attention output, in the bytes of rotary_store_kv_torch (PyTorch's own bf16/fp16
    ops, as transformers rotates) followed by the attention kernel. Before rotary's launches turned
    FP fusion off, rotary_store_kv_triton's keys differed from PyTorch's by one ulp in ~17% of
    elements (H100, 2026-12-07; kernels/rotary_triton.py)."""
    from test_rotary_attention_triton import decode_case

    from epochserve.kernels.paged_attention_triton import NewTokens
    from epochserve.kernels.rotary import rotary_store_kv_torch

    seqs = [s for s, _ in DECODE] + [64, 65]
    batch, (q, k, v), positions, slots, cos_sin = decode_case(seqs, 32, 4, 128, dtype, 0, "cuda")
    results = {}
    for name in ("torch", "triton", "folded"):
        caches = (batch.key_cache.clone(), batch.value_cache.clone())
        query, new = q, None
        if name == "folded":
            new = NewTokens(k, v, positions, cos_sin, slots)
        else:
            rotate = rotary_store_kv_torch if name == "torch" else rotary_store_kv_triton
            query = rotate(q, k, v, positions, cos_sin, *caches, slots)
        out = paged_attention_triton(
            query, *caches, batch.block_tables, batch.seq_lens, batch.query_start_loc, 128**-0.5,
            max_query_len=1, max_seq_len=batch.max_seq_len, fixed_split_tokens=fixed, new=new,
        )  # fmt: skip
        results[name] = (out, *caches)
    differing = (results["triton"][1] != results["torch"][1]).sum().item() / (len(seqs) * 4 * 128)
    print(f"\n{dtype}: rotary_store_kv_triton's keys differ from PyTorch's in {differing:.1%} of elements")
    for path in ("folded", "triton"):
        for a, b in zip(results[path], results["torch"], strict=True):
            assert same_bytes(a, b), path
