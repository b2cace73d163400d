"""Shared pieces of the GPU benchmarks: the machine's two ceilings, the 8B model shape (and a tiny one)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16",
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
}  # fmt: skip
# A 2-layer Llama of the same architecture for CPU smoke runs of the scripts (random weights).
LLAMA32_1B = {
    **LLAMA31_8B, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True,
    "rope_scaling": {**LLAMA31_8B["rope_scaling"], "factor": 32.0},
}  # fmt: skip
LLAMA_TINY = {
    **LLAMA31_8B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False,
    "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip


def write_config(directory: Path, config: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or LLAMA31_8B))
    return directory


def weight_bytes(config: dict, bytes_per_param: int = 2) -> int:
    """Bytes of every weight of a Llama-shaped model (what a decode step must read at least)."""
    h, i, v, layers = (
        config["hidden_size"],
        config["intermediate_size"],
        config["vocab_size"],
        config["num_hidden_layers"],
    )
    kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * i + 2 * h
    lm_head = 0 if config["tie_word_embeddings"] else v * h
    return bytes_per_param * (layers * per_layer + v * h + lm_head + h)


def kv_bytes_per_token(config: dict, bytes_per_value: int = 2) -> int:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * bytes_per_value


def cuda_time(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of fn() measured with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def measure_ceilings() -> dict[str, float]:
    """HBM copy bandwidth (bytes read + written per second) and bf16 matmul peak (FLOP/s), now."""
    src = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)  # 2 GiB, far beyond L2
    dst = torch.empty_like(src)
    copy_s = cuda_time(lambda: dst.copy_(src))
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    mm_s = cuda_time(lambda: a @ b)
    return {"hbm_bytes_per_s": 2 * (1 << 30) * 2 / copy_s, "bf16_flop_per_s": 2 * n**3 / mm_s}


def wall(fn: Callable[[], object]) -> float:
    """Seconds of fn(), the device's queued work included (CPU runs: no device to wait for)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start
