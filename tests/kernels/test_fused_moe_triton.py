"""fused_moe_triton vs fused_moe_torch (kernels/fused_moe.py) in the interpreter, fp32 and fp16: the
device-side alignment, the output against the reference, ranks' partial sums, and batch invariance
in bytes. Small random shapes: several experts (some given no tokens), top-k 2-4, 1..40 tokens,
widths and hidden sizes that are and are not multiples of the tiles, expert_map.

Tolerances, as ‖out − ref‖ / ‖ref‖ (error analysis):
- fp32: both sides round at the same points (gate-up, activation, down, fp32 combine in the same
  expert order) and differ only in the order of each product's K-term sum (the reference's BLAS
  blocks K its own way): ~sqrt(K)·u relative per product with u = 2**-24, K ≤ 160 here → ~1e-6;
  SiLU's exp is the interpreter's vs torch's (a few ulps); two chained products. Bound: 1e-5.
- fp16: operands are fp16 in both; products of fp16 values are exact in fp32 and both accumulate in
  fp32, so sums differ by ~sqrt(K)·2**-24 as above. What shows is where such a difference crosses
  an fp16 rounding (gate, up, activation, down, the output): that element moves by one fp16 ulp
  (2**-11 relative), and the down product and the weighted sum average such flips out. Bound: 2e-3,
  four ulps of the output (the gemv tests' bound).
"""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.fused_moe import fused_moe_torch, topk_route
from epochserve.kernels.fused_moe_gemv_triton import routed_moe_gemv_triton
from epochserve.kernels.fused_moe_triton import (
    MoeTiles,
    fused_moe_triton,
    max_padded_rows,
    moe_align,
)
from epochserve.kernels.gemv_triton import GemvTiles
from epochserve.kernels.moe_topk_triton import topk_route_triton
from epochserve.worker.layers.ops import TritonOps

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all()
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def make_layer(
    seed: int, tokens: int, experts: int, top_k: int, hidden: int, width: int, dtype: torch.dtype,
    local: range | None = None,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """x, w13, w2 (of the `local` experts, default all), routing weights and global ids, expert_map."""
    gen = torch.Generator().manual_seed(seed)
    local = local if local is not None else range(experts)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    w13 = (torch.randn(len(local), 2 * width, hidden, generator=gen) / hidden**0.5).to(dtype)
    w2 = (torch.randn(len(local), hidden, width, generator=gen) / width**0.5).to(dtype)
    # skewed logits: a few experts take most tokens and some get none
    logits = torch.randn(tokens, experts, generator=gen) + torch.linspace(0, 3, experts)
    weights, ids = topk_route(logits, top_k, renormalize=seed % 2 == 0)
    expert_map = None
    if len(local) != experts:
        expert_map = torch.full((experts,), -1, dtype=torch.int64)
        expert_map[local.start : local.stop] = torch.arange(len(local))
    return x, w13, w2, weights, ids, expert_map


# (tokens, experts, top_k, hidden, width): K of gate-up / down in and out of the 64-wide K steps
CASES = [
    (1, 8, 2, 64, 32),
    (7, 6, 4, 80, 40),
    (23, 16, 3, 128, 48),
    (40, 8, 2, 96, 160),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "t{}-e{}-k{}-h{}-w{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_reference(case: tuple[int, ...], dtype: torch.dtype) -> None:
    tokens, experts, top_k, hidden, width = case
    x, w13, w2, weights, ids, _ = make_layer(sum(case), tokens, experts, top_k, hidden, width, dtype)
    out = fused_moe_triton(x, w13, w2, weights, ids)
    assert out.shape == x.shape and out.dtype == dtype
    assert rel_err(out, fused_moe_torch(x, w13, w2, weights, ids)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_expert_map_takes_this_ranks_experts_only(dtype: torch.dtype) -> None:
    """Experts [3, 8) of 10 on this rank: other ranks' pairs are skipped (some tokens have none)."""
    x, w13, w2, weights, ids, expert_map = make_layer(5, 19, 10, 3, 64, 48, dtype, local=range(3, 8))
    assert expert_map is not None
    out = fused_moe_triton(x, w13, w2, weights, ids, expert_map)
    ref = fused_moe_torch(x, w13, w2, weights, ids, expert_map)
    assert rel_err(out, ref) < TOL[dtype]
    untouched = ~((ids >= 3) & (ids < 8)).any(dim=1)
    assert untouched.any() and (out[untouched] == 0).all()


def test_ranks_partial_sums_add_up_to_the_whole() -> None:
    """Expert parallelism (each rank its experts, via expert_map) and tensor parallelism (each rank a
    slice of every expert's width): the ranks' partials sum to the unsharded layer (fp32)."""
    x, w13, w2, weights, ids, _ = make_layer(11, 17, 8, 3, 64, 64, torch.float32)
    whole = fused_moe_triton(x, w13, w2, weights, ids)
    ep = torch.zeros_like(whole)
    for first in (0, 4):
        expert_map = torch.full((8,), -1, dtype=torch.int64)
        expert_map[first : first + 4] = torch.arange(4)
        mine = slice(first, first + 4)
        ep += fused_moe_triton(x, w13[mine].contiguous(), w2[mine].contiguous(), weights, ids, expert_map)
    tp = torch.zeros_like(whole)
    for rows in (slice(0, 32), slice(32, 64)):
        gate, up = w13[:, :64][:, rows], w13[:, 64:][:, rows]
        w13_shard = torch.cat([gate, up], dim=1).contiguous()
        tp += fused_moe_triton(x, w13_shard, w2[:, :, rows].contiguous(), weights, ids)
    assert rel_err(ep, whole) < 1e-6  # the same rows, each token's experts added in another grouping
    assert rel_err(tp, whole) < 1e-5  # each down product's K split in two


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_tokens_output_does_not_depend_on_the_batch(dtype: torch.dtype) -> None:
    """Bytes: tokens computed in a batch of 40, alone, and among other tokens (other experts' groups,
    other places in their blocks) are identical."""
    x, w13, w2, weights, ids, _ = make_layer(7, 40, 8, 3, 96, 48, dtype)
    full = fused_moe_triton(x, w13, w2, weights, ids)
    for t in (0, 17, 39):
        alone = fused_moe_triton(
            x[t : t + 1].clone(), w13, w2, weights[t : t + 1].clone(), ids[t : t + 1].clone()
        )
        assert torch.equal(alone, full[t : t + 1])
    pick = torch.tensor([39, 3, 17, 5, 0, 22, 11])  # reordered subset: new groups and block places
    subset = fused_moe_triton(x[pick], w13, w2, weights[pick], ids[pick])
    assert torch.equal(subset, full[pick])


@pytest.mark.parametrize("max_chunk", [16, 1024], ids=["many-chunks", "one-chunk"])
@pytest.mark.parametrize("mapped", [False, True], ids=["all-local", "expert-map"])
def test_alignment_groups_pairs_by_expert(max_chunk: int, mapped: bool) -> None:
    """Each local expert's pairs in ascending order, padded with num_pairs to whole blocks, the
    groups in expert order; blocks labelled with their expert, -1 past the last group."""
    gen = torch.Generator().manual_seed(3)
    tokens, top_k, experts, block_m = 37, 3, 12, 16
    allowed = torch.tensor([e for e in range(experts) if e != 9])  # expert 9 gets no pair
    ids = torch.stack([allowed[torch.randperm(len(allowed), generator=gen)[:top_k]] for _ in range(tokens)])
    expert_map, num_local = None, experts
    if mapped:
        expert_map = torch.full((experts,), -1, dtype=torch.int64)
        expert_map[4:10] = torch.arange(6)  # this rank: experts 4..9
        num_local = 6
    align = moe_align(ids, num_local, block_m, expert_map, max_chunk=max_chunk)
    local = (expert_map[ids] if expert_map is not None else ids).reshape(-1)
    num_pairs = local.numel()
    assert torch.equal(align.local_ids, local.to(torch.int32))
    rows = align.sorted_pairs.tolist()
    row = 0
    for expert in range(num_local):
        pairs = (local == expert).nonzero().flatten().tolist()
        padded = -(-len(pairs) // block_m) * block_m
        assert rows[row : row + len(pairs)] == pairs
        assert rows[row + len(pairs) : row + padded] == [num_pairs] * (padded - len(pairs))
        assert align.block_experts[row // block_m : (row + padded) // block_m].tolist() == [expert] * (
            padded // block_m
        )
        row += padded
    assert int(align.num_padded) == row <= len(rows) == max_padded_rows(num_pairs, num_local, block_m)
    assert (align.block_experts[row // block_m :] == -1).all()


def test_empty_batch_and_no_local_pairs() -> None:
    x, w13, w2, weights, ids, expert_map = make_layer(2, 3, 8, 2, 64, 32, torch.float32, local=range(6, 8))
    assert expert_map is not None
    empty = fused_moe_triton(x[:0], w13, w2, weights[:0], ids[:0], expert_map)
    assert empty.shape == (0, 64)
    ids = torch.tensor([[0, 1], [2, 3], [4, 5]])  # none of them on this rank
    assert (fused_moe_triton(x, w13, w2, weights, ids, expert_map) == 0).all()


def test_tiles_do_not_change_the_values_beyond_rounding() -> None:
    """Other tiles (a benchmark's override) walk K in other steps: same values within fp32 rounding."""
    x, w13, w2, weights, ids, _ = make_layer(9, 12, 6, 2, 128, 96, torch.float32)
    base = fused_moe_triton(x, w13, w2, weights, ids)
    other = fused_moe_triton(x, w13, w2, weights, ids, tiles=MoeTiles(32, 32, 16, 4, 2))
    assert rel_err(other, base) < 1e-5


def test_triton_ops_route_fused_moe_to_the_kernel() -> None:
    x, w13, w2, weights, ids, _ = make_layer(4, 5, 8, 2, 64, 32, torch.float32)
    assert torch.equal(
        TritonOps().fused_moe(x, w13, w2, weights, ids), fused_moe_triton(x, w13, w2, weights, ids)
    )


def router_logits(seed: int, tokens: int, experts: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(tokens, experts, generator=gen) * 2


@pytest.mark.parametrize("tokens", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_few_token_path_matches_the_reference(tokens: int, dtype: torch.dtype) -> None:
    """routed_moe_gemv_triton (decode at batch <= 4): the reference router's choice and the
    reference's values, all experts local or this rank's experts only (tokens without one give
    zeros); K not a multiple of its K step, hidden not a multiple of the down tile."""
    small_up = GemvTiles(block_n=16, block_k=32, num_warps=4, num_stages=1)  # K=80: masked steps
    small_down = GemvTiles(block_n=32, block_k=16, num_warps=4, num_stages=1)  # K=40, hidden 80
    for local in (None, range(3, 8)):
        for renormalize in (False, True):
            x, w13, w2, _, _, expert_map = make_layer(tokens, tokens, 10, 3, 80, 40, dtype, local=local)
            logits = router_logits(tokens, tokens, 10)
            want_w, want_ids = topk_route(logits, 3, renormalize)
            out, weights, ids = routed_moe_gemv_triton(
                x, logits, w13, w2, 3, renormalize, expert_map, gate_up=small_up, down_tiles=small_down
            )
            assert torch.equal(ids, want_ids)
            torch.testing.assert_close(weights, want_w, rtol=1e-6, atol=0)  # Triton's exp: a few ulps
            assert out.shape == x.shape and out.dtype == dtype
            want = fused_moe_torch(x, w13, w2, want_w, want_ids, expert_map)
            assert rel_err(out, want) < TOL[dtype]
            if local is not None:
                untouched = ~((ids >= 3) & (ids < 8)).any(dim=1)
                assert (out[untouched] == 0).all()


def test_the_few_token_path_takes_the_top_k_kernels_routing() -> None:
    """Its routing is moe_topk_triton's: the same ids and weights, to the bit."""
    logits = router_logits(7, 4, 64)
    x, w13, w2, _, _, _ = make_layer(7, 4, 64, 8, 32, 16, torch.float32)
    _, weights, ids = routed_moe_gemv_triton(x, logits, w13, w2, 8, True)
    want_w, want_ids = topk_route_triton(logits, 8, True)
    assert torch.equal(ids, want_ids) and torch.equal(weights, want_w)


def test_triton_ops_take_the_few_token_path_outside_batch_invariant_mode() -> None:
    x, w13, w2, _, _, _ = make_layer(4, 2, 8, 2, 64, 32, torch.float32)
    logits = router_logits(4, 2, 8)
    few, _, few_ids = routed_moe_gemv_triton(x, logits, w13, w2, 2, False)
    weights, ids = topk_route_triton(logits, 2, False)
    grouped = fused_moe_triton(x, w13, w2, weights, ids)
    assert rel_err(few, grouped) < TOL[torch.float32]
    assert torch.equal(ids, few_ids)
    for ops, want in (
        (TritonOps(), few),
        (TritonOps(batch_invariant=True), grouped),
        (TritonOps(use_gemv=False), grouped),
    ):
        assert torch.equal(ops.fused_moe(x, w13, w2, weights, ids), want)


def test_refuses_mismatched_shapes() -> None:
    x, w13, w2, weights, ids, _ = make_layer(4, 5, 8, 2, 64, 32, torch.float32)
    with pytest.raises(ValueError, match="do not fit"):
        fused_moe_triton(x, w13[:, :48], w2, weights, ids)
    with pytest.raises(ValueError, match=r"float16"):
        fused_moe_triton(x.half(), w13, w2, weights, ids)


def test_engine_triton_path_matches_torch_path_on_a_moe_model(tiny_moe_dirs) -> None:
    """The engine on a tiny random Qwen2-MoE (2 sparse layers, 8 experts, top-2, a shared expert),
    fp32: TritonOps (this kernel in every sparse layer) gives the PyTorch path's tokens and logprobs.
    (One kind: ~25 s in the interpreter; the kernel sees the same inputs under Qwen3-MoE.)"""
    kind = "qwen2_moe"
    from fixtures.engine import make_engine, make_request, run_to_completion

    prompts = [[5, 6, 7], list(range(10, 30))]
    results = {}
    for mode in ("torch", "triton"):
        engine = make_engine(tiny_moe_dirs[kind], block_size=16, num_kv_blocks=32, kernel_mode=mode)
        requests = [
            make_request(f"r{i}", p, engine.limits, temperature=0.9, seed=i, max_tokens=4, ignore_eos=True)
            for i, p in enumerate(prompts)
        ]
        results[mode] = run_to_completion(engine, requests)
    for rid, samples in results["torch"].items():
        assert results["triton"][rid][0].token_ids == samples[0].token_ids
        assert results["triton"][rid][0].logprobs == pytest.approx(samples[0].logprobs, abs=1e-4)
