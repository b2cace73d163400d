"""fused_moe_triton on CUDA: bf16/fp16/fp32 against fused_moe_torch (kernels/fused_moe.py) at the Qwen
MoE layer shapes, expert_map, batch invariance in bytes, and a CUDA graph that captures the whole
call (no host synchronisation) and replays it on new routing.

Run: `python -m pytest -q tests/gpu/test_moe_gpu.py` (skips without CUDA).

Tolerances (‖out − ref‖ / ‖ref‖): both sides round at the same points (gate and up, the activation,
the down product, the output; the weighted sum in fp32), and both accumulate products in fp32, so
the sums differ only in order (~sqrt(K)·2**-24). That shows where it tips an intermediate's
rounding: one ulp of the element (bf16 2**-8, fp16 2**-11 relative), averaged out by the products
and the sum downstream. Bounds: 1e-2 bf16, 2e-3 fp16 (the attention kernels' bounds), 1e-5 fp32
(IEEE dots, K ≤ 2560). Against an fp32 computation on the same 16-bit inputs, the kernel must also
be no less accurate than the reference itself (within 10%).
"""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.fused_moe import fused_moe_torch, topk_route
from epochserve.kernels.fused_moe_gemv_triton import routed_moe_gemv_triton
from epochserve.kernels.fused_moe_triton import fused_moe_triton, moe_align
from epochserve.worker.layers.ops import TritonOps

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# name → (experts, top_k, hidden, moe_intermediate, renormalize)
SHAPES = {
    "qwen3-30b-a3b": (128, 8, 2048, 768, True),
    "qwen3-30b-a3b-tp2": (128, 8, 2048, 384, True),  # one rank's slice of each expert's width
    "qwen1.5-moe-a2.7b": (60, 4, 2048, 1408, False),  # Qwen2MoeForCausalLM
}
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "non-finite output"
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    )


def make_weights(shape: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    experts, _, hidden, width, _ = SHAPES[shape]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    w13 = torch.randn(experts, 2 * width, hidden, device="cuda", generator=gen) / hidden**0.5
    w2 = torch.randn(experts, hidden, width, device="cuda", generator=gen) / width**0.5
    return w13.to(dtype), w2.to(dtype)


def make_routed_tokens(shape: str, tokens: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    """x and its router logits: the input of the routed paths."""
    experts, _, hidden, _, _ = SHAPES[shape]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(tokens, hidden, device="cuda", generator=gen).to(dtype)
    return x, torch.randn(tokens, experts, device="cuda", generator=gen) * 2


def make_tokens(shape: str, tokens: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    """x and the reference router's (weights, ids) for make_routed_tokens' logits."""
    _, top_k, _, _, renormalize = SHAPES[shape]
    x, logits = make_routed_tokens(shape, tokens, dtype, seed)
    return x, *topk_route(logits, top_k, renormalize)


@pytest.fixture(scope="module")
def layers() -> dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]]:
    return {}


def layer(cache: dict, shape: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    if (shape, dtype) not in cache:
        cache.clear()  # one layer at a time in memory
        cache[(shape, dtype)] = make_weights(shape, dtype)
    return cache[(shape, dtype)]


@pytest.mark.parametrize("tokens", [1, 5, 64, 257])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_reference(layers: dict, shape: str, dtype: torch.dtype, tokens: int) -> None:
    w13, w2 = layer(layers, shape, dtype)
    x, weights, ids = make_tokens(shape, tokens, dtype, seed=tokens)
    out = fused_moe_triton(x, w13, w2, weights, ids)
    ref = fused_moe_torch(x, w13, w2, weights, ids)
    assert out.dtype == dtype and rel_err(out, ref) < TOL[dtype]
    if tokens <= 64:  # against fp32 arithmetic on the same inputs: no less accurate than the reference
        exact = fused_moe_torch(x.float(), w13.float(), w2.float(), weights, ids)
        assert rel_err(out, exact) <= 1.1 * rel_err(ref, exact) + 1e-4


@pytest.mark.parametrize("tokens", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_few_token_path_matches_reference(layers: dict, shape: str, dtype: torch.dtype, tokens: int):
    """routed_moe_gemv_triton (decode at batch <= 4 outside batch_invariant): the reference router's
    experts (random logits: no near-ties), its weights within fp32 rounding, and the same bounds."""
    w13, w2 = layer(layers, shape, dtype)
    _, top_k, _, _, renormalize = SHAPES[shape]
    x, logits = make_routed_tokens(shape, tokens, dtype, seed=tokens)
    out, weights, ids = routed_moe_gemv_triton(x, logits, w13, w2, top_k, renormalize)
    ref_weights, ref_ids = topk_route(logits, top_k, renormalize)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-5, atol=1e-7)
    ref = fused_moe_torch(x, w13, w2, weights, ids)
    assert out.dtype == dtype and rel_err(out, ref) < TOL[dtype]
    exact = fused_moe_torch(x.float(), w13.float(), w2.float(), weights, ids)
    assert rel_err(out, exact) <= 1.1 * rel_err(ref, exact) + 1e-4


def test_fp32_matches_reference() -> None:
    w13, w2 = make_weights("qwen1.5-moe-a2.7b", torch.float32)
    x, weights, ids = make_tokens("qwen1.5-moe-a2.7b", 33, torch.float32, seed=1)
    assert (
        rel_err(fused_moe_triton(x, w13, w2, weights, ids), fused_moe_torch(x, w13, w2, weights, ids)) < 1e-5
    )


def test_expert_map_halves_add_up(layers: dict) -> None:
    """Expert parallelism over 2 ranks: each rank's experts through expert_map, vs the reference per
    rank, and the two partials against the whole layer."""
    w13, w2 = layer(layers, "qwen3-30b-a3b", torch.bfloat16)
    x, weights, ids = make_tokens("qwen3-30b-a3b", 48, torch.bfloat16, seed=7)
    total = torch.zeros_like(x, dtype=torch.float32)
    for first in (0, 64):
        expert_map = torch.full((128,), -1, dtype=torch.int64, device="cuda")
        expert_map[first : first + 64] = torch.arange(64, device="cuda")
        mine = slice(first, first + 64)
        part = fused_moe_triton(x, w13[mine], w2[mine], weights, ids, expert_map)
        ref = fused_moe_torch(x, w13[mine], w2[mine], weights, ids, expert_map)
        assert rel_err(part, ref) < TOL[torch.bfloat16]
        total += part.float()
    whole = fused_moe_triton(x, w13, w2, weights, ids)
    assert rel_err(total, whole) < 1e-2  # each partial rounded to bf16 once


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_a_tokens_bytes_do_not_depend_on_the_batch(layers: dict, dtype: torch.dtype) -> None:
    """One token alone, then first, last and in the middle among 1..255 random others."""
    shape = "qwen3-30b-a3b"
    w13, w2 = layer(layers, shape, dtype)
    x, weights, ids = make_tokens(shape, 1, dtype, seed=100)
    alone = fused_moe_triton(x, w13, w2, weights, ids)
    for others in (1, 7, 63, 255):
        ox, ow, oi = make_tokens(shape, others, dtype, seed=others)
        for place in (0, others // 2, others):
            bx = torch.cat([ox[:place], x, ox[place:]])
            bw = torch.cat([ow[:place], weights, ow[place:]])
            bi = torch.cat([oi[:place], ids, oi[place:]])
            out = fused_moe_triton(bx, w13, w2, bw, bi)
            assert same_bytes(out[place : place + 1], alone), (others, place)


def routed_moe(ops: TritonOps, x, logits, w13, w2, top_k: int, renormalize: bool) -> tuple:
    weights, ids = ops.moe_topk(logits, top_k, renormalize)
    return ops.fused_moe(x, w13, w2, weights, ids), ids


@pytest.mark.parametrize("tokens", [1, 16], ids=["few-token-path", "grouped"])
def test_a_cuda_graph_captures_it_and_replays_new_routing(layers: dict, tokens: int) -> None:
    """No host synchronisation inside: capture succeeds (a sync would raise), and a replay on new
    inputs and router logits gives the eager call's bytes and experts. Through TritonOps' top-k and
    fused_moe, as the engine calls them without the norm fold."""
    shape = "qwen3-30b-a3b"
    w13, w2 = layer(layers, shape, torch.bfloat16)
    _, top_k, _, _, renormalize = SHAPES[shape]
    ops = TritonOps()
    x, logits = make_routed_tokens(shape, tokens, torch.bfloat16, seed=1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        routed_moe(ops, x, logits, w13, w2, top_k, renormalize)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, ids = routed_moe(ops, x, logits, w13, w2, top_k, renormalize)
    for seed in (2, 3):
        nx, nl = make_routed_tokens(shape, tokens, torch.bfloat16, seed=seed)
        x.copy_(nx), logits.copy_(nl)
        graph.replay()
        torch.cuda.synchronize()
        eager, eager_ids = routed_moe(ops, nx, nl, w13, w2, top_k, renormalize)
        assert same_bytes(out, eager) and torch.equal(ids, eager_ids)
        nw, ni = topk_route(nl, top_k, renormalize)
        assert rel_err(out, fused_moe_torch(nx, w13, w2, nw, ni)) < TOL[torch.bfloat16]


def test_alignment_on_the_device() -> None:
    """The alignment's result on CUDA equals the interpreter-tested contract: groups in expert order,
    pairs ascending, padding with num_pairs, -1 past the last group (several chunks)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, 60, (700, 4), device="cuda", generator=gen)  # repeated ids are fine here
    align = moe_align(ids, 60, 16, max_chunk=256)
    local = ids.reshape(-1).cpu()
    rows, experts = align.sorted_pairs.cpu().tolist(), align.block_experts.cpu().tolist()
    row = 0
    for expert in range(60):
        pairs = (local == expert).nonzero().flatten().tolist()
        padded = -(-len(pairs) // 16) * 16
        assert rows[row : row + len(pairs)] == pairs
        assert rows[row + len(pairs) : row + padded] == [local.numel()] * (padded - len(pairs))
        assert experts[row // 16 : (row + padded) // 16] == [expert] * (padded // 16)
        row += padded
    assert int(align.num_padded) == row and all(e == -1 for e in experts[row // 16 :])


@pytest.mark.parametrize("tokens", [1, 64, 257])
def test_the_one_launch_router_matches_reference(tokens: int) -> None:
    """topk_route_triton on CUDA (TritonOps.moe_topk): the reference's ids in order, its weights
    within fp32 rounding (random logits: no two weights within rounding of each other)."""
    from epochserve.kernels.moe_topk_triton import topk_route_triton

    gen = torch.Generator(device="cuda").manual_seed(tokens)
    logits = torch.randn(tokens, 128, device="cuda", generator=gen) * 2
    weights, ids = topk_route_triton(logits, 8, renormalize=True)
    ref_weights, ref_ids = topk_route(logits, 8, renormalize=True)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-5, atol=1e-7)
