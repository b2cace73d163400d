"""Compile every Triton kernel for an H100 (sm_90) on a machine without a GPU.

The interpreter runs kernels as NumPy and misses what only the real compiler rejects (a non-constexpr
global, an unsupported op); ptxas ships inside the triton wheel, so the full pipeline runs here.
`python tests/kernels/sm90_compile.py` prints each kernel's registers, spills, shared memory and key
SASS instruction counts (HGMMA/HMMA: tensor cores; LDGSTS: async copies; LDL/STL: local memory);
tests/kernels/test_sm90_compile.py runs it as a test. Must run without TRITON_INTERPRET.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_SASS_OPS = ("HGMMA", "HMMA", "LDGSTS", "LDG.E.128", "LDL", "STL", "MUFU.EX2")


def _const(value: Any) -> tuple[str, Any]:
    return ("constexpr", value)


def compile_sm90(
    fn: Any, args: dict[str, Any], num_warps: int, num_stages: int, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """args: name → type string ("*bf16", "i32", "fp32") or _const(value); options: the launch's
    compile options (e.g. rotary's NO_FP_FUSION). Returns resource usage, and FMA16: the PTX's
    16-bit fmas (a product and a sum rounded once, where a kernel may mean to round twice)."""
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        value = args[name]
        if isinstance(value, tuple):
            signature[name], constexprs[name] = "constexpr", value[1]
        else:
            signature[name] = value
            if value.startswith("*") or name.startswith("stride"):
                attrs[(i,)] = [["tt.divisibility", 16]]  # what launches see for aligned tensors
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        src,
        target=GPUTarget("cuda", 90, 32),
        options=dict(num_warps=num_warps, num_stages=num_stages, **(options or {})),
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run(
            [f"{_BIN}/cuobjdump", "-res-usage", f.name], capture_output=True, text=True
        ).stdout
        sass = subprocess.run([f"{_BIN}/cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    assert found, usage
    report: dict[str, Any] = {
        "regs": int(found[1]),
        "stack": int(found[2]),
        "shared": compiled.metadata.shared,
    }
    report.update({op: sass.count(op) for op in _SASS_OPS})
    ptx = compiled.asm["ptx"]
    report["FMA16"] = ptx.count("fma.rn.bf16") + ptx.count("fma.rn.f16")
    return report


def _attention(
    dtype: str, group: int, head_dim: int, tiles: Any, page: int, schedule: str, rotary: str = ""
) -> tuple:
    """rotary: "" (q rotated before), "rope" (ROTARY) or "rope+norm" (ROTARY with the q/k norm)."""
    from epochserve.kernels.paged_attention_kernels import _paged_attention_kernel

    strides = (
        "qt",
        "qh",
        "ot",
        "oh",
        "kb",
        "ks",
        "kh",
        "vb",
        "vs",
        "vh",
        "bt",
        "knt",
        "knh",
        "vnt",
        "vnh",
        "cs",
    )
    names = ("num_seqs", "split_tokens", "num_parts", *(f"stride_{s}" for s in strides))
    args: dict[str, Any] = {n: "i32" for n in names}
    args.update(
        out_ptr=f"*{dtype}", part_acc_ptr="*fp32", part_m_ptr="*fp32", part_l_ptr="*fp32", q_ptr=f"*{dtype}",
        k_cache_ptr=f"*{dtype}", v_cache_ptr=f"*{dtype}", block_tables_ptr="*i32", seq_lens_ptr="*i32",
        query_start_loc_ptr="*i32", counters_ptr="*i32", scale_log2e="fp32", GROUP=_const(group),
        HEAD_DIM=_const(head_dim), GROUP_PAD=_const(triton.next_power_of_2(group)),
        HEAD_DIM_PAD=_const(triton.next_power_of_2(head_dim)), BLOCK_M=_const(tiles.block_m),
        BLOCK_Q=_const(tiles.block_m // group), BLOCK_N=_const(tiles.block_n), PAGE_SIZE=_const(page),
        SCHEDULE=_const(schedule.removesuffix("-fold")), DECODE=_const(schedule.startswith("split")),
        FOLD=_const(schedule.endswith("-fold")),
        DOT_PRECISION=_const("ieee" if dtype == "fp32" else "tf32"), PDL=_const(True),
        k_new_ptr=f"*{dtype}", v_new_ptr=f"*{dtype}", positions_ptr="*i64", slot_mapping_ptr="*i64",
        cos_sin_ptr="*fp32", q_norm_ptr=f"*{dtype}", k_norm_ptr=f"*{dtype}", eps="fp32",
        ROTARY=_const(bool(rotary)), HAS_NORM=_const(rotary == "rope+norm"),
    )  # fmt: skip
    return _paged_attention_kernel, args, tiles.num_warps, tiles.num_stages


def _reduce(dtype: str, group: int, head_dim: int) -> tuple:
    from epochserve.kernels.paged_attention_kernels import _reduce_partitions_kernel

    args: dict[str, Any] = dict(
        out_ptr=f"*{dtype}", part_acc_ptr="*fp32", part_m_ptr="*fp32", part_l_ptr="*fp32",
        seq_lens_ptr="*i32", query_start_loc_ptr="*i32", num_seqs="i32", split_tokens="i32",
        num_parts="i32", stride_ot="i32", stride_oh="i32", GROUP=_const(group),
        GROUP_PAD=_const(triton.next_power_of_2(group)), HEAD_DIM=_const(head_dim),
        HEAD_DIM_PAD=_const(head_dim), PDL=_const(True),
    )  # fmt: skip
    return _reduce_partitions_kernel, args, 4, 3


def _matmul(dtype: str, n: int, k: int, fp32_precision: str = "ieee") -> tuple:
    import torch

    from epochserve.kernels.matmul_batch_invariant import _matmul_kernel, matmul_tiles

    t = matmul_tiles(n, k, getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]))
    args: dict[str, Any] = dict(
        x_ptr=f"*{dtype}", w_ptr=f"*{dtype}", bias_ptr=f"*{dtype}", out_ptr=f"*{dtype}", M="i32", N="i32",
        K="i32", stride_xm="i32", stride_wn="i32", stride_om="i32", HAS_BIAS=_const(True),
        EVEN_K=_const(k % t.block_k == 0), BLOCK_M=_const(t.block_m), BLOCK_N=_const(t.block_n),
        BLOCK_K=_const(t.block_k), GROUP_M=_const(t.group_m),
        DOT_PRECISION=_const(fp32_precision if dtype == "fp32" else "tf32"),
    )  # fmt: skip
    return _matmul_kernel, args, t.num_warps, t.num_stages


def _matmul_tma(n: int, k: int) -> tuple:
    """The prefill tiles' persistent TMA kernel (bf16, the 8B shapes, 132 SMs)."""
    import torch

    from epochserve.kernels.matmul_batch_invariant import PREFILL_MIN_ROWS, _matmul_tma_kernel, matmul_tiles

    t = matmul_tiles(n, k, torch.bfloat16, PREFILL_MIN_ROWS)
    assert t.tma
    args: dict[str, Any] = dict(
        x_desc=f"tensordesc<bf16[{t.block_m}, {t.block_k}]>",
        w_desc=f"tensordesc<bf16[{t.block_n}, {t.block_k}]>",
        out_desc=f"tensordesc<bf16[{t.block_m}, {t.block_n}]>", bias_ptr="*bf16", M="i32", N="i32", K="i32",
        HAS_BIAS=_const(False), BLOCK_M=_const(t.block_m), BLOCK_N=_const(t.block_n),
        BLOCK_K=_const(t.block_k), GROUP_M=_const(t.group_m), NUM_PROGRAMS=_const(132),
    )  # fmt: skip
    return _matmul_tma_kernel, args, t.num_warps, t.num_stages


def _moe(dtype: str, gated: bool, hidden: int = 2048, width: int = 768) -> tuple:
    """A grouped product of fused_moe_triton at the Qwen3-30B-A3B layer shape (its engine tiles)."""
    import torch

    from epochserve.kernels.fused_moe_triton import _moe_gemm_kernel, moe_tiles

    t = moe_tiles(
        hidden, width, getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype])
    )
    k = hidden if gated else width
    args: dict[str, Any] = dict(
        out_ptr=f"*{dtype}", a_ptr=f"*{dtype}", w_ptr=f"*{dtype}", sorted_pairs_ptr="*i32",
        block_experts_ptr="*i32", num_pairs="i32", N="i32", K="i32", stride_am="i32", stride_we="i32",
        stride_wn="i32", stride_om="i32", up_offset="i32", ROW_DIV=_const(8 if gated else 1),
        GATED=_const(gated), EVEN_K=_const(k % t.block_k == 0), BLOCK_M=_const(t.block_m),
        BLOCK_N=_const(t.block_n), BLOCK_K=_const(t.block_k),
        DOT_PRECISION=_const("ieee" if dtype == "fp32" else "tf32"), ROWWISE_DOT=_const(False),
    )  # fmt: skip
    return _moe_gemm_kernel, args, t.num_warps, t.num_stages


def _moe_routing() -> list[tuple[str, tuple]]:
    """fused_moe_triton's alignment and combine kernels: 128 experts, top-8, hidden 2048."""
    from epochserve.kernels.fused_moe_triton import (
        _LABEL_BLOCKS,
        MAX_CHUNK,
        _combine_kernel,
        _count_kernel,
        _place_kernel,
        _scan_kernel,
    )

    count = dict(topk_ids_ptr="*i64", expert_map_ptr="*i64", local_ids_ptr="*i32", counts_ptr="*i32",
                 prefix_ptr="*i32", num_pairs="i32", num_local="i32", HAS_MAP=_const(True),
                 CHUNK=_const(MAX_CHUNK), E_PAD=_const(128))  # fmt: skip
    scan = dict(counts_ptr="*i32", offsets_ptr="*i32", expert_start_ptr="*i32", expert_count_ptr="*i32",
                num_padded_ptr="*i32", num_chunks="i32", BLOCK_M=_const(16), E_PAD=_const(128))  # fmt: skip
    place = dict(local_ids_ptr="*i32", offsets_ptr="*i32", prefix_ptr="*i32", expert_start_ptr="*i32",
                 expert_count_ptr="*i32", sorted_pairs_ptr="*i32", block_experts_ptr="*i32", num_pairs="i32",
                 num_chunks="i32", max_blocks="i32", BLOCK_M=_const(16), CHUNK=_const(MAX_CHUNK),
                 E_PAD=_const(128), LABEL_BLOCKS=_const(_LABEL_BLOCKS))  # fmt: skip
    combine = dict(out_ptr="*bf16", down_ptr="*bf16", weights_ptr="*fp32", local_ids_ptr="*i32",
                   num_tokens="i32", H="i32", stride_om="i32", stride_dm="i32", stride_wt="i32",
                   TOP_K=_const(8), K_PAD=_const(8), BLOCK_T=_const(8), BLOCK_H=_const(512))  # fmt: skip
    return [
        ("moe count E128 chunk1024", (_count_kernel, count, 4, 3)),
        ("moe count E128 chunk16", (_count_kernel, {**count, "CHUNK": _const(16)}, 4, 3)),
        ("moe scan E128", (_scan_kernel, scan, 4, 3)),
        ("moe place E128 chunk1024", (_place_kernel, place, 4, 3)),
        ("moe place E128 chunk16", (_place_kernel, {**place, "CHUNK": _const(16)}, 4, 3)),
        ("moe combine bf16 top8 H2048", (_combine_kernel, combine, 4, 3)),
    ]


def _moe_few_tokens() -> list[tuple[str, tuple]]:
    """routed_moe_gemv_triton's gate-up and down kernels (its engine tiles), the router's top-k and
    its fp32-out product: Qwen3-30B-A3B, 128 experts, top-8, hidden 2048, width 768."""
    from epochserve.kernels.fused_moe_gemv_triton import (
        DOWN_TILES,
        GATE_UP_TILES,
        _down_combine_kernel,
        _gate_up_kernel,
    )
    from epochserve.kernels.gemv_triton import _gemv_kernel, gemv_tiles
    from epochserve.kernels.moe_topk_triton import _topk_route_kernel

    up, dn, rt = GATE_UP_TILES, DOWN_TILES, gemv_tiles(128, 2048)
    gate_up = dict(act_ptr="*bf16", x_ptr="*bf16", w_ptr="*bf16", ids_ptr="*i64", expert_map_ptr="*i64",
                   local_ids_ptr="*i32", N="i32", K="i32", stride_xm="i32", stride_we="i32", stride_wn="i32",
                   stride_om="i32", TOP_K=_const(8), HAS_MAP=_const(False), BLOCK_N=_const(up.block_n),
                   BLOCK_K=_const(up.block_k), PDL=_const(True))  # fmt: skip
    down = dict(out_ptr="*bf16", act_ptr="*bf16", w_ptr="*bf16", weights_ptr="*fp32", local_ids_ptr="*i32",
                N="i32", K="i32", stride_om="i32", stride_am="i32", stride_we="i32", stride_wn="i32",
                TOP_K=_const(8), K_PAD=_const(8), BLOCK_N=_const(dn.block_n), BLOCK_K=_const(dn.block_k),
                PDL=_const(True))  # fmt: skip
    topk = dict(logits_ptr="*fp32", weights_ptr="*fp32", ids_ptr="*i64", num_experts="i32", stride_l="i32",
                TOP_K=_const(8), K_PAD=_const(8), E_PAD=_const(128), RENORMALIZE=_const(True))  # fmt: skip
    router = dict(out_ptr="*fp32", x_ptr="*bf16", weight_ptr="*bf16", M="i32", N="i32", K="i32",
                  stride_xm="i32", stride_wn="i32", stride_om="i32", SILU_AND_MUL=_const(False),
                  BLOCK_M=_const(1), BLOCK_N=_const(rt.block_n), BLOCK_K=_const(rt.block_k),
                  PDL=_const(True))  # fmt: skip
    return [
        (
            "moe few-token gate-up+silu bf16 H2048 W768",
            (_gate_up_kernel, gate_up, up.num_warps, up.num_stages),
        ),
        (
            "moe few-token down+combine bf16 H2048 W768",
            (_down_combine_kernel, down, dn.num_warps, dn.num_stages),
        ),
        ("moe router top-k E128 k8", (_topk_route_kernel, topk, 1, 3)),
        ("moe router gemv fp32-out N128 K2048", (_gemv_kernel, router, rt.num_warps, rt.num_stages)),
    ]


def _elementwise() -> list[tuple[str, tuple]]:
    from epochserve.kernels.activation_triton import _silu_and_mul_kernel
    from epochserve.kernels.gemv_triton import _gemv_kernel, gemv_tiles
    from epochserve.kernels.kv_cache_triton import _write_kv_cache_kernel
    from epochserve.kernels.rmsnorm_gemv_triton import _add_rms_norm_gemv_kernel, norm_gemv_tiles
    from epochserve.kernels.rmsnorm_triton import _rms_norm_kernel
    from epochserve.kernels.rotary_kv_cache_triton import _rotary_store_kv_kernel
    from epochserve.kernels.rotary_triton import NO_FP_FUSION, _rotary_kernel
    from epochserve.kernels.softmax_stats_triton import CHUNK, _chunk_stats_kernel, _combine_kernel

    kv = {n: "i32" for n in _write_kv_cache_kernel.arg_names if n.startswith("stride")}
    kv.update(key_ptr="*bf16", value_ptr="*bf16", key_cache_ptr="*bf16", value_cache_ptr="*bf16",
              slot_mapping_ptr="*i64", NUM_KV_HEADS=_const(8), HEAD_DIM=_const(128), BLOCK_H=_const(8),
              BLOCK_D=_const(128), PAGE_SIZE=_const(16))  # fmt: skip
    norm = dict(out_ptr="*bf16", summed_ptr="*bf16", x_ptr="*bf16", residual_ptr="*bf16", weight_ptr="*bf16",
                eps="fp32", inner="i32", stride_x0="i32", stride_x1="i32", stride_r0="i32", stride_r1="i32",
                HIDDEN=_const(4096), BLOCK=_const(4096), HAS_RESIDUAL=_const(True),
                PDL=_const(True))  # fmt: skip
    rot = {n: "i32" for n in _rotary_kernel.arg_names if n.startswith("stride")}
    rot.update(q_ptr="*bf16", q_out_ptr="*bf16", k_ptr="*bf16", k_out_ptr="*bf16", positions_ptr="*i64",
               cos_sin_ptr="*fp32", NUM_Q_HEADS=_const(32), NUM_K_HEADS=_const(8), BLOCK_QH=_const(32),
               BLOCK_KH=_const(8), HALF=_const(64), BLOCK_HALF=_const(64), HAS_K=_const(True))  # fmt: skip
    silu = dict(out_ptr="*bf16", gate_up_ptr="*bf16", stride_in="i32", intermediate="i32", BLOCK=_const(1024))
    rot_kv = {n: "i32" for n in _rotary_store_kv_kernel.arg_names if n.startswith("stride")}
    rot_kv.update(q_ptr="*bf16", q_out_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", key_cache_ptr="*bf16",
                  value_cache_ptr="*bf16", positions_ptr="*i64", slot_mapping_ptr="*i64", cos_sin_ptr="*fp32",
                  q_norm_ptr="*bf16", k_norm_ptr="*bf16", eps="fp32", NUM_Q_HEADS=_const(32),
                  NUM_KV_HEADS=_const(8), BLOCK_QH=_const(32), BLOCK_KH=_const(8), HALF=_const(64),
                  BLOCK_HALF=_const(64), PAGE_SIZE=_const(16), HAS_NORM=_const(False),
                  PDL=_const(True))  # fmt: skip
    gemv = dict(out_ptr="*bf16", x_ptr="*bf16", weight_ptr="*bf16", M="i32", N="i32", K="i32",
                stride_xm="i32", stride_wn="i32", stride_om="i32", SILU_AND_MUL=_const(True),
                BLOCK_M=_const(1), BLOCK_N=_const(16), BLOCK_K=_const(1024), PDL=_const(True))  # fmt: skip
    short = gemv_tiles(5120, 2048)
    short_gemv = {**gemv, "SILU_AND_MUL": _const(False), "BLOCK_N": _const(short.block_n),
                  "BLOCK_K": _const(short.block_k)}  # fmt: skip
    norm_tiles = norm_gemv_tiles(5120, 2048)
    norm_gemv = dict(out_ptr="*bf16", summed_ptr="*bf16", normed_ptr="*bf16", x_ptr="*bf16",
                     residual_ptr="*bf16", norm_weight_ptr="*bf16", weight_ptr="*bf16", M="i32", N="i32",
                     K="i32", eps="fp32",
                     stride_xm="i32", stride_rm="i32", stride_wn="i32", stride_om="i32",
                     HAS_RESIDUAL=_const(True), STORE_NORMED=_const(False), BLOCK_M=_const(1),
                     BLOCK_N=_const(norm_tiles.block_n), BLOCK_K=_const(2048), PDL=_const(True),
                     counter_ptr="*i32", topk_weights_ptr="*fp32", topk_ids_ptr="*i64",
                     ROUTE=_const(False), TOP_K=_const(1), K_PAD=_const(2), E_PAD=_const(16),
                     RENORMALIZE=_const(False))  # fmt: skip
    chunk_stats = dict(logits_ptr="*fp32", max_ptr="*fp32", index_ptr="*i64", sum_ptr="*fp32",
                       finite_ptr="*i32", vocab="i32", row_stride="i32", num_chunks="i32",
                       CHUNK=_const(CHUNK))  # fmt: skip
    combine = dict(max_ptr="*fp32", index_ptr="*i64", sum_ptr="*fp32", finite_ptr="*i32", argmax_ptr="*i64",
                   lse_ptr="*fp32", all_finite_ptr="*i32", num_chunks="i32", vocab="i32",
                   CHUNKS=_const(32))  # fmt: skip
    return [
        ("softmax_stats chunks fp32", (_chunk_stats_kernel, chunk_stats, 8, 3)),
        ("softmax_stats combine fp32", (_combine_kernel, combine, 1, 3)),
        ("write_kv_cache bf16", (_write_kv_cache_kernel, kv, 4, 3)),
        ("add_rms_norm bf16 4096", (_rms_norm_kernel, norm, 8, 3)),
        ("rotary_qk bf16 32/8x128", (_rotary_kernel, rot, 4, 3, NO_FP_FUSION)),
        ("silu_and_mul bf16", (_silu_and_mul_kernel, silu, 4, 3)),
        ("rotary_store_kv bf16 32/8x128", (_rotary_store_kv_kernel, rot_kv, 4, 3, NO_FP_FUSION)),
        (
            "rotary_store_kv + q/k norm bf16 32/4x128",
            (
                _rotary_store_kv_kernel,
                {**rot_kv, "NUM_KV_HEADS": _const(4), "BLOCK_KH": _const(4), "HAS_NORM": _const(True)},
                4,
                3,
                NO_FP_FUSION,
            ),
        ),
        ("silu_and_mul gemv bf16 N4096 K14336", (_gemv_kernel, gemv, 8, 2)),
        ("gemv bf16 N6144 K4096", (_gemv_kernel, {**gemv, "SILU_AND_MUL": _const(False)}, 8, 2)),
        (
            "gemv bf16 N5120 K2048 (short-row tiles)",
            (_gemv_kernel, short_gemv, short.num_warps, short.num_stages),
        ),
        (
            "add_rms_norm gemv bf16 N5120 K2048",
            (_add_rms_norm_gemv_kernel, norm_gemv, norm_tiles.num_warps, norm_tiles.num_stages),
        ),
        (
            "add_rms_norm gemv fp32-out N128 K2048 + normed row",
            (
                _add_rms_norm_gemv_kernel,
                {**norm_gemv, "out_ptr": "*fp32", "STORE_NORMED": _const(True)},
                norm_tiles.num_warps,
                norm_tiles.num_stages,
            ),
        ),
        (
            "add_rms_norm gemv fp32-out N128 K2048 + normed + top-8",
            (
                _add_rms_norm_gemv_kernel,
                {
                    **norm_gemv,
                    "out_ptr": "*fp32",
                    "STORE_NORMED": _const(True),
                    "ROUTE": _const(True),
                    "TOP_K": _const(8),
                    "K_PAD": _const(8),
                    "E_PAD": _const(128),
                    "RENORMALIZE": _const(True),
                },
                norm_tiles.num_warps,
                norm_tiles.num_stages,
            ),
        ),
    ]


def cases() -> list[tuple[str, Callable[[], tuple]]]:
    """(label, thunk → (kernel, args, num_warps, num_stages)) for the configurations the engine uses."""
    from epochserve.kernels.paged_attention_triton import decode_tiles, prefill_tiles

    out: list[tuple[str, Callable[[], tuple]]] = []
    for dtype, group, head_dim, page in (("bf16", 4, 128, 16), ("fp16", 3, 64, 32), ("bf16", 8, 128, 32)):
        decode, prefill = decode_tiles(group), prefill_tiles(group)
        schedules = ((decode, "single"), (decode, "loop"), (decode, "split"), (decode, "split-fold"))
        for tiles, schedule in (*schedules, (prefill, "single")):
            kind = "decode" if tiles is decode else "prefill"
            label = f"attention {dtype} G{group} D{head_dim} page{page} {kind}-tiles {schedule}"
            thunk = functools.partial(_attention, dtype, group, head_dim, tiles, page, schedule)
            out.append((label, thunk))
        for schedule in ("loop", "split-fold"):  # decode with rotary and the KV store folded in
            for rotary in ("rope", "rope+norm"):
                label = f"attention {dtype} G{group} D{head_dim} page{page} decode-tiles {schedule} {rotary}"
                thunk = functools.partial(_attention, dtype, group, head_dim, decode, page, schedule, rotary)
                out.append((label, thunk))
        out.append(
            (f"reduce {dtype} G{group} D{head_dim}", functools.partial(_reduce, dtype, group, head_dim))
        )
    for dtype, n, k in (("bf16", 6144, 4096), ("bf16", 28672, 4096), ("fp32", 128256, 4096)):
        out.append((f"matmul {dtype} N{n} K{k}", functools.partial(_matmul, dtype, n, k)))
    for n, k in ((6144, 4096), (4096, 14336)):
        out.append((f"matmul tma bf16 N{n} K{k} prefill", functools.partial(_matmul_tma, n, k)))
    out.append(
        ("matmul fp32 tf32x3 N128256 K4096", functools.partial(_matmul, "fp32", 128256, 4096, "tf32x3"))
    )
    fp32_attention = functools.partial(_attention, "fp32", 4, 128, decode_tiles(4), 16, "split")
    out.append(("attention fp32 G4 D128 page16 decode-tiles split", fp32_attention))
    out.extend((label, lambda c=case: c) for label, case in _elementwise())
    for dtype in ("bf16", "fp16", "fp32"):
        for gated in (True, False):
            label = f"moe {'gate-up+silu' if gated else 'down'} {dtype} H2048 W768"
            out.append((label, functools.partial(_moe, dtype, gated)))
    out.extend((label, lambda c=case: c) for label, case in _moe_routing())
    out.extend((label, lambda c=case: c) for label, case in _moe_few_tokens())
    return out


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: this compiles for the GPU", file=sys.stderr)
        return 2
    for label, thunk in cases():
        kernel, args, num_warps, num_stages, *options = thunk()
        r = compile_sm90(kernel, args, num_warps, num_stages, *options)
        ops = " ".join(f"{op}={r[op]}" for op in (*_SASS_OPS, "FMA16") if r[op])
        print(f"{label:58s} regs={r['regs']:3d} stack={r['stack']} smem={r['shared']:6d} {ops}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
