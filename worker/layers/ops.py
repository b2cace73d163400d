"""KernelOps: the tensor functions the model layers call, chosen once per engine.

`TorchOps` is the PyTorch reference path (CPU, and the oracle for tests). On CUDA the engine uses
Triton kernels with the same signatures (kernels/*_triton.py); `batch_invariant` swaps in kernels
whose per-row results do not depend on the batch. Layers hold the ops object they were built with,
so the choice is explicit and no module-global state decides it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from epochserve.kernels.activation import silu_and_mul_torch
from epochserve.kernels.fused_moe import fused_moe_torch, topk_route
from epochserve.kernels.paged_attention import paged_attention_torch
from epochserve.kernels.rmsnorm import add_rms_norm_torch, rms_norm_torch
from epochserve.kernels.rotary import QKNorm, rotary_store_kv_torch
from epochserve.kernels.sampling import SampledRows, SampleRows
from epochserve.kernels.softmax_stats import softmax_stats_torch

if TYPE_CHECKING:
    from epochserve.kernels.paged_attention_triton import NewTokens
    from epochserve.worker.layers.attention import AttentionMetadata, LayerKVCache

# batch_invariant on CPU: MKL picks its sgemm kernel, and how its threads split the work, by the
# product's shape. Measured on a 2-core Sapphire Rapids: a row's sums run in another order at 1, 2-15
# and >= 16 rows, and for K = 1536 again at 57-128 rows, so a token's numbers would follow how many
# tokens share its step. Every product then runs as slices of exactly this many rows (the last one
# zero-padded): one shape, one kernel, one order of the sums, and a row's bits do not depend on its
# place in the slice (tests/unit/worker/test_linear_batch_invariance.py checks both where it runs).
# 16: a decode step of up to 16 sequences is still one product (memory-bound: the weights are read
# once either way); a prefill of T tokens pays T / 16 products instead of one.
CPU_INVARIANT_ROWS = 16
# From this many rows an fp32 matmul on CUDA goes through 3xTF32 (see TritonOps.linear); below, it
# is memory-bound and cuBLAS' fp32 reads the weight fastest.
TF32X3_MIN_ROWS = 64
# Rows up to which 16-bit projections run through gemv_triton (the down projection with SiLU-and-mul
# fused): faster than cuBLAS at 1 row, slower from 2 (H200, bench/decode_kernels_microbench.py).
GEMV_MAX_ROWS = 1
# Plain products of larger weights (the gate-up projection) stay on cuBLAS, which streams them near
# the bandwidth at any row count.
GEMV_MAX_WEIGHT_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class TorchOps:
    """Pure PyTorch: the reference every other path is checked against.

    batch_invariant (CPU): products run in fixed-size row slices (CPU_INVARIANT_ROWS), so a request's
    tokens and logprobs are bit-identical whatever shares its batch; the other ops are row-wise or
    per sequence already (attention: one SDPA call per sequence). Without it a row's low bits follow
    the batch's size: a request alone and in a batch agree to fp32 rounding, not to the bit.
    """

    name: str = "torch"
    batch_invariant: bool = False

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.batch_invariant and x.device.type == "cpu":
            return linear_in_row_slices(x, weight, bias)
        return F.linear(x, weight, bias)

    def linear_fp32(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x · Wᵀ in fp32 arithmetic, fp32 out (the lm_head), for an fp32 table or a 16-bit one whose
        values fp32 holds exactly. The reference: both operands upcast, an fp32 matmul."""
        if x.is_cuda and weight.dtype != torch.float32 and x.dtype == weight.dtype:
            # Same numbers without an fp32 copy of the table: 16-bit products are exact in fp32 and
            # cuBLAS sums them in fp32 (the output type), so only the order of the sums differs.
            return torch.mm(x, weight.t(), out_dtype=torch.float32)
        return self.linear(x.float(), weight.float())

    def softmax_stats(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row of fp32 logits: (argmax, logsumexp, all finite) — what the sampler needs.

        batch_invariant (CPU): one row at a time. Torch splits a lone row's sum across threads but
        gives each thread whole rows of a larger table, so a logsumexp's last bit followed the batch."""
        if self.batch_invariant and logits.shape[0] > 1 and logits.device.type == "cpu":
            argmax, lse, finite = zip(*(softmax_stats_torch(row) for row in logits.split(1)), strict=True)
            return torch.cat(argmax), torch.cat(lse), torch.cat(finite)
        return softmax_stats_torch(logits)

    def sample_rows(
        self, logits: torch.Tensor, greedy: torch.Tensor, raw_lse: torch.Tensor, rows: SampleRows
    ) -> SampledRows | None:
        """Each row's token, processed logprob and support size in fused, sort-free kernels, where
        there are some (greedy, raw_lse: softmax_stats of the raw logits). None here: the Sampler then
        runs its sorted PyTorch path (filter_logits + counter-based noise), the reference."""
        return None

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm_torch(x, weight, eps)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm_torch(x, residual, weight, eps)

    def norm_then_linear(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        norm_weight: torch.Tensor,
        eps: float,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        fp32_out: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(linear(norm(x + residual)), x + residual, norm(x + residual)): a pre-norm block's norm and
        the projection after it (fp32_out: linear_fp32, the MoE router's). Without a residual, x is
        the residual stream itself (the first layer's embedding)."""
        if residual is None:
            normed, summed = self.rms_norm(x, norm_weight, eps), x
        else:
            normed, summed = self.add_rms_norm(x, residual, norm_weight, eps)
        out = self.linear_fp32(normed, weight) if fp32_out else self.linear(normed, weight, bias)
        return out, summed, normed

    def norm_then_route(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        norm_weight: torch.Tensor,
        eps: float,
        gate_weight: torch.Tensor,
        top_k: int,
        renormalize: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(routing weights fp32, expert ids [n, top_k] by descending weight, x + residual,
        norm(x + residual)): an MoE block's norm, its router's product in fp32 (fewer near-ties
        decided by rounding) and the router's choice."""
        logits, summed, normed = self.norm_then_linear(
            x, residual, norm_weight, eps, gate_weight, fp32_out=True
        )
        weights, ids = self.moe_topk(logits, top_k, renormalize)
        return weights, ids, summed, normed

    def rotary_store_kv(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        qk_norm: QKNorm | None = None,
    ) -> torch.Tensor:
        """(Normalize each q and k head, when qk_norm,) rotate q and k by their positions, store k
        and v in their cache slots; the rotated q."""
        return rotary_store_kv_torch(
            q, k, v, positions, cos_sin, key_cache, value_cache, slot_mapping, qk_norm
        )

    def rotary_attention(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        cache: LayerKVCache,
        meta: AttentionMetadata,
        scale: float,
        qk_norm: QKNorm | None = None,
    ) -> torch.Tensor:
        """rotary_store_kv, then attention over the cache that now holds the new keys and values."""
        q = self.rotary_store_kv(
            q, k, v, positions, cos_sin, cache.key, cache.value, meta.slot_mapping, qk_norm
        )
        return self.attention(q, cache.key, cache.value, meta, scale)

    def silu_and_mul_linear(self, gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The MLP's down projection of its gate-up output: silu(gate) * up, then · Wᵀ."""
        return self.linear(silu_and_mul_torch(gate_up), weight)

    def attention(
        self,
        query: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        return paged_attention_torch(
            query, key_cache, value_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, scale
        )

    def moe_topk(
        self, router_logits: torch.Tensor, top_k: int, renormalize: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The router's choice: (fp32 weights, expert ids) [n, top_k], by descending weight."""
        return topk_route(router_logits, top_k, renormalize)

    def fused_moe(
        self,
        x: torch.Tensor,
        w13: torch.Tensor,
        w2: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        expert_map: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """This rank's share of the routed experts' output (kernels/fused_moe.py); the caller
        all-reduces. Products go through self.linear, so batch_invariant covers them."""
        return fused_moe_torch(x, w13, w2, topk_weights, topk_ids, expert_map, linear=self.linear)


TORCH_OPS = TorchOps()


def linear_in_row_slices(
    x: torch.Tensor,  # [num_tokens, in_features]
    weight: torch.Tensor,  # [out_features, in_features]
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """F.linear computed CPU_INVARIANT_ROWS rows at a time: row i's result depends on row i only."""
    num_rows = x.shape[0]
    padding = -num_rows % CPU_INVARIANT_ROWS
    if padding:
        x = torch.cat([x, x.new_zeros(padding, *x.shape[1:])])
    parts = [F.linear(part, weight, bias) for part in x.split(CPU_INVARIANT_ROWS)]
    return torch.cat(parts)[:num_rows]


@dataclass(frozen=True, slots=True)
class TritonOps(TorchOps):
    """Triton kernels (kernels/*_triton.py) on CUDA; the same math as TorchOps, checked against it.

    batch_invariant: every reduction whose order could follow the batch is pinned — matmuls through
    matmul_batch_invariant (fixed tiles, no split-K), attention with a fixed partition length — so a
    request's tokens and logprobs are bit-identical whatever shares its batch (docs/kernels.md).
    """

    name: str = "triton"
    use_gemv: bool = True  # 1-row projections through gemv_triton (benchmarks compare with cuBLAS)
    # A norm and the 1-row projection after it in one launch (add_rms_norm_gemv_triton; an MoE
    # router's top-k too): W1 +5% (docs/kernels.md). The engine's default (model_setup.py); off
    # here, so that a TritonOps built by hand keeps the launches apart.
    norm_into_gemv: bool = False

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        from epochserve.kernels.matmul_batch_invariant import matmul_batch_invariant

        fp32 = x.dtype == torch.float32
        if self.batch_invariant:
            # fp32 (the lm_head): 3xTF32 on the tensor cores, within fp32 rounding (2.4e-7 relative
            # vs fp64 on H100, cuBLAS fp32: 1.2e-6) and the same path for every batch size.
            return matmul_batch_invariant(x, weight, bias, fp32_precision="tf32x3" if fp32 else "ieee")
        if fp32 and x.shape[0] >= TF32X3_MIN_ROWS:
            # Many rows of fp32 (the lm_head of a large decode batch): 3xTF32 is both faster than
            # cuBLAS' IEEE fp32 (3.95 vs 5.48 ms at 256 x 4096 x 128k, H100) and as accurate.
            return matmul_batch_invariant(x, weight, bias, fp32_precision="tf32x3")
        if self._takes_gemv(x, weight) and bias is None and weight.numel() * 2 <= GEMV_MAX_WEIGHT_BYTES:
            from epochserve.kernels.gemv_triton import gemv_triton

            # One row through the smaller projections (qkv, o_proj): cuBLAS reads them at 73% and 60%
            # of bandwidth at batch 1; this kernel at 79% and 74% (H200). The gate-up projection stays
            # on cuBLAS, which reads its 235 MB at ~97%.
            return gemv_triton(x, weight)
        return F.linear(x, weight, bias)

    def _takes_gemv(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        return (
            self.use_gemv
            and not self.batch_invariant
            and x.shape[0] <= GEMV_MAX_ROWS
            and x.dtype in (torch.bfloat16, torch.float16)
            and x.dtype == weight.dtype
        )

    def linear_fp32(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if weight.dtype == torch.float32 or x.dtype != weight.dtype:
            return self.linear(x.float(), weight.float())
        if self.batch_invariant:
            from epochserve.kernels.matmul_batch_invariant import matmul_batch_invariant

            # 16-bit operands on the tensor cores, fp32 accumulator stored as it is (never rounded).
            return matmul_batch_invariant(x, weight, out_dtype=torch.float32)
        if self._takes_gemv(x, weight) and weight.numel() * weight.element_size() <= GEMV_MAX_WEIGHT_BYTES:
            from epochserve.kernels.gemv_triton import gemv_triton

            # One row through a small table (the MoE router, 0.5 MB): cuBLAS' fp32-out product takes
            # ~5 us (H100), 48 times a token. The lm_head (hundreds of MB) stays on cuBLAS.
            return gemv_triton(x, weight, out_dtype=torch.float32)
        return TorchOps.linear_fp32(self, x, weight)

    def softmax_stats(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from epochserve.kernels.softmax_stats_triton import softmax_stats_triton

        # torch reduces a lone 128k row on a few SMs (~80 µs a token for the three reductions, H200).
        return softmax_stats_triton(logits)

    def sample_rows(
        self, logits: torch.Tensor, greedy: torch.Tensor, raw_lse: torch.Tensor, rows: SampleRows
    ) -> SampledRows | None:
        from epochserve.kernels.sampling_triton import sample_rows_triton

        # The default since tests/gpu/test_sampling_gpu.py and the microbench passed on an H100
        # (2026-12-05; 256 x 128k rows: 1.0 ms at T=1 and 5.9 ms with top_p, against 4.6 and 10.5 ms
        # sorted). EPOCHSERVE_FUSED_SAMPLER=0 selects the sorted path (a benchmark baseline).
        if logits.is_cuda and os.environ.get("EPOCHSERVE_FUSED_SAMPLER", "1") == "0":
            return None
        # A threshold search over the logits instead of the sorted path's sort, fp64 cumsum and
        # scatter. Batch-invariant as is: chunks follow the vocabulary size, reductions run in a
        # fixed order, rows never mix; so in both modes.
        return sample_rows_triton(logits, greedy, raw_lse, rows)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        from epochserve.kernels.rmsnorm_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from epochserve.kernels.rmsnorm_triton import add_rms_norm_triton

        return add_rms_norm_triton(x, residual, weight, eps)

    def norm_then_linear(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        norm_weight: torch.Tensor,
        eps: float,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        fp32_out: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from epochserve.kernels.rmsnorm_gemv_triton import add_rms_norm_gemv_triton

        if bias is None and self._folds_norm(x, norm_weight, weight):
            # One launch instead of two at batch 1 (kernels/rmsnorm_gemv_triton.py).
            out_dtype = torch.float32 if fp32_out else None
            out, summed, normed = add_rms_norm_gemv_triton(
                x, residual, norm_weight, eps, weight, out_dtype=out_dtype, store_normed=True
            )
            assert normed is not None
            return out, summed, normed
        return TorchOps.norm_then_linear(self, x, residual, norm_weight, eps, weight, bias, fp32_out=fp32_out)

    def norm_then_route(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        norm_weight: torch.Tensor,
        eps: float,
        gate_weight: torch.Tensor,
        top_k: int,
        renormalize: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from epochserve.kernels.rmsnorm_gemv_triton import add_rms_norm_route_triton

        if self._folds_norm(x, norm_weight, gate_weight):
            # The norm, the router's product and its top-k in one launch at batch 1: the program
            # that stores its logits last routes (kernels/rmsnorm_gemv_triton.py).
            routed = add_rms_norm_route_triton(x, residual, norm_weight, eps, gate_weight, top_k, renormalize)
            if routed is not None:  # None: inside a graph capture with no counter to take
                return routed
        return TorchOps.norm_then_route(self, x, residual, norm_weight, eps, gate_weight, top_k, renormalize)

    def _folds_norm(self, x: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor) -> bool:
        from epochserve.kernels.rmsnorm_gemv_triton import takes_norm_gemv

        return (
            self.norm_into_gemv
            and self._takes_gemv(x, weight)
            and takes_norm_gemv(x, weight)
            and norm_weight.dtype == x.dtype
        )

    def rotary_store_kv(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        qk_norm: QKNorm | None = None,
    ) -> torch.Tensor:
        # One launch, the q/k norms included; per-token arithmetic, so batch-invariant as it is.
        # Negative slots (padded rows of a CUDA-graph batch) are skipped.
        from epochserve.kernels.rotary_kv_cache_triton import rotary_store_kv_triton

        return rotary_store_kv_triton(
            q, k, v, positions, cos_sin, key_cache, value_cache, slot_mapping, qk_norm
        )

    def silu_and_mul_linear(self, gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        from epochserve.kernels.activation_triton import silu_and_mul_triton
        from epochserve.kernels.gemv_triton import silu_and_mul_gemv_triton

        if self._takes_gemv(gate_up, weight):
            # One row (batch-1 decode): a memory-bound product with the activation in its
            # prologue — one launch instead of two, no activation round trip.
            return silu_and_mul_gemv_triton(gate_up, weight)
        return self.linear(silu_and_mul_triton(gate_up), weight)

    def attention(
        self,
        query: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        return self._paged_attention(query, key_cache, value_cache, meta, scale)

    def rotary_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        cache: LayerKVCache,
        meta: AttentionMetadata,
        scale: float,
        qk_norm: QKNorm | None = None,
    ) -> torch.Tensor:
        from epochserve.kernels.paged_attention_triton import NewTokens, rotary_fold_enabled

        if meta.max_query_len > 1 or not rotary_fold_enabled():  # (no bare super() in a slots dataclass)
            return TorchOps.rotary_attention(self, q, k, v, positions, cos_sin, cache, meta, scale, qk_norm)
        # Decode: the rotary + store launch folded into attention's (kernels/decode_rotary.py).
        new = NewTokens(k, v, positions, cos_sin, meta.slot_mapping, qk_norm)
        return self._paged_attention(q, cache.key, cache.value, meta, scale, new)

    def _paged_attention(
        self,
        query: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        new: NewTokens | None = None,
    ) -> torch.Tensor:
        from epochserve.kernels.paged_attention_triton import (
            BATCH_INVARIANT_SPLIT_TOKENS,
            paged_attention_triton,
        )

        assert meta.seq_lens_tensor is not None and meta.query_start_loc_tensor is not None
        # A graph's plan follows its capture-time bounds (meta.max_seq_len, its batch): valid at replay.
        fixed = BATCH_INVARIANT_SPLIT_TOKENS if self.batch_invariant else None
        seq_lens, starts = meta.seq_lens_tensor, meta.query_start_loc_tensor
        return paged_attention_triton(
            query, key_cache, value_cache, meta.block_tables, seq_lens, starts, scale,
            max_query_len=meta.max_query_len, max_seq_len=meta.max_seq_len, fixed_split_tokens=fixed, new=new,
        )  # fmt: skip

    def moe_topk(
        self, router_logits: torch.Tensor, top_k: int, renormalize: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from epochserve.kernels.moe_topk_triton import topk_route_triton

        # One launch per layer instead of five (kernels/moe_topk_triton.py): a batch-1 decode step
        # of a 48-layer MoE model pays every launch 48 times.
        return topk_route_triton(router_logits, top_k, renormalize)

    def fused_moe(
        self,
        x: torch.Tensor,
        w13: torch.Tensor,
        w2: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        expert_map: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from epochserve.kernels import fused_moe_gemv_triton as few
        from epochserve.kernels.fused_moe_triton import fused_moe_triton

        if self.use_gemv and not self.batch_invariant and x.shape[0] <= few.MAX_TOKENS:
            # A few tokens (decode at batch 1-4) outside batch_invariant: one matrix-vector product
            # per (token, expert) pair, the down one with the combine, no grouping
            # (kernels/fused_moe_gemv_triton.py).
            return few.moe_gemv_triton(x, w13, w2, topk_weights, topk_ids, expert_map)
        # Tokens grouped by expert on the device (no host sync, so decode graphs capture MoE layers),
        # one grouped product for gate-up with SiLU-and-mul, one for down, an fp32 combine in each
        # token's expert order. Fixed tiles and no split-K: batch-invariant as it is, so in both modes.
        return fused_moe_triton(x, w13, w2, topk_weights, topk_ids, expert_map)
