"""EngineConfig: everything that shapes one worker's engine, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model_dir: Path
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    # Weights and KV dtype. "auto": float32 on CPU (bf16 matmul is ~50x slower there), bfloat16 on CUDA.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # The output projection's arithmetic. float32 by default so logits and logprobs never pass
    # through bf16 (docs/design.md §1; its table keeps the checkpoint's precision, layers/vocab.py);
    # "model" computes in the weights' dtype and is for experiments only.
    lm_head_dtype: Literal["float32", "model"] = "float32"
    block_size: int = 16  # tokens per KV block
    max_num_seqs: int = 128  # sequences running at once
    max_num_batched_tokens: int = 2048  # tokens per step (prefill chunks + decodes)
    max_model_len: int | None = None  # context limit; default: the model's, capped by the KV pool
    kv_cache_bytes: int = 1 << 30  # CPU: KV pool budget in bytes
    kv_cache_memory_fraction: float = 0.85  # CUDA: share of the memory free after loading weights
    num_kv_blocks: int | None = None  # exact pool size; overrides both budgets (tests)
    enable_prefix_cache: bool = True
    policy_version: int = 0  # version of the weights loaded at start
    max_n: int = 16  # most samples per request
    # Stage new policy versions in device memory when it fits (the swap is then a device copy,
    # milliseconds), else in pinned host memory (no device memory, a slower swap).
    stage_on_device: bool = True
    cuda_graphs: bool = True  # CUDA: replay decode steps from captured graphs (DecodeGraphs)
    # Captured batch sizes go up by this step above 64 (cuda_graphs.decode_buckets): a smaller step
    # pads fewer rows a pass (an overlap has two passes a step) and captures more graphs.
    graph_bucket_step: int = 32
    # "auto": Triton kernels on CUDA, PyTorch on CPU; "torch": the PyTorch reference everywhere.
    kernel_mode: Literal["auto", "torch", "triton"] = "auto"
    # Bit-identical tokens and logprobs for a request whatever shares its batch: fixed reduction
    # orders in matmul, attention and norms (CUDA: the Triton kernels; CPU: PyTorch's products in
    # fixed 16-row slices, layers/ops.py). Costs throughput (docs/benchmarks.md). Off, a request
    # alone and in a batch agree to fp32 rounding (or the model dtype's), not to the bit.
    batch_invariant: bool = False
    # "safetensors": load the checkpoint; "random": N(0, 0.02) weights from config.json alone (benchmarks).
    load_format: Literal["safetensors", "random"] = "safetensors"
    # Prepare and queue decode step N+1 while step N runs on the device, instead of waiting for N's
    # tokens first (Engine.step). The same outputs as the synchronous path (tests compare them).
    # "auto": on for CUDA. TP ranks receive the run-ahead step's tokens by a device broadcast.
    async_scheduling: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        if not 0.0 < self.kv_cache_memory_fraction <= 1.0:
            raise ValueError(
                f"kv_cache_memory_fraction must be in (0, 1], got {self.kv_cache_memory_fraction}"
            )
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError("num_kv_blocks must be >= 1")
        if self.policy_version < 0 or self.max_n < 1:
            raise ValueError("policy_version must be >= 0 and max_n >= 1")
        if self.load_format not in ("safetensors", "random"):
            raise ValueError(f"load_format must be safetensors or random, got {self.load_format!r}")
        if self.graph_bucket_step < 1:
            raise ValueError(f"graph_bucket_step must be >= 1, got {self.graph_bucket_step}")
        if self.async_scheduling not in ("auto", "on", "off"):
            raise ValueError(f"async_scheduling must be auto, on or off, got {self.async_scheduling!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype}")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float32 if self.torch_device.type == "cpu" else torch.bfloat16
        return DTYPES[self.dtype]
