"""GPU smoke test of the engine as it is (PyTorch path): versions, parity, a first timing.

Run on a lent GPU machine from the repo root (bench/device_env.sh carries the wheels):
    python bench/gpu_smoke.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def versions() -> None:
    import google.protobuf
    import grpc
    import transformers
    import triton

    print(
        f"torch {torch.__version__} triton {triton.__version__} transformers {transformers.__version__} "
        f"grpc {grpc.__version__} protobuf {google.protobuf.__version__}"
    )
    print(f"device {torch.cuda.get_device_name()} x{torch.cuda.device_count()}")


def parity(tmp: Path) -> None:
    from fixtures.engine import hf_greedy, make_engine, make_request, run_to_completion
    from fixtures.models import build_tiny_model

    model_dir = build_tiny_model("llama", tmp / "tiny")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
    engine = make_engine(model_dir, device="cuda", dtype="float32", num_kv_blocks=256)
    prompts = [[5 + i, 17, 33, 9, 100, 200, 300][: 3 + i] for i in range(4)]
    requests = [
        make_request(f"r{i}", p, engine.limits, temperature=0.0, max_tokens=16, ignore_eos=True)
        for i, p in enumerate(prompts)
    ]
    results = run_to_completion(engine, requests)
    same = sum(results[f"r{i}"][0].token_ids == hf_greedy(hf, p, 16) for i, p in enumerate(prompts))
    print(f"fp32 cuda greedy parity vs HF: {same}/{len(prompts)}")
    bf16 = make_engine(model_dir, device="cuda", dtype="bfloat16", num_kv_blocks=256)
    out = run_to_completion(bf16, [make_request("b", prompts[0], bf16.limits, max_tokens=8)])
    print(f"bf16 run ok: {out['b'][0].token_ids}")


def w1_torch_path(tmp: Path) -> None:
    from fixtures.engine import make_engine, make_request, run_to_completion

    config = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "eos_token_id": 128001,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    model_dir = tmp / "llama8b"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(config))
    engine = make_engine(
        model_dir, device="cuda", load_format="random", max_model_len=4096, kv_cache_memory_fraction=0.5
    )
    prompt = list(range(1000, 1128))
    run_to_completion(
        engine, [make_request("warm", prompt, engine.limits, temperature=0.0, max_tokens=8, ignore_eos=True)]
    )
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = run_to_completion(
        engine, [make_request("w1", prompt, engine.limits, temperature=0.0, max_tokens=64, ignore_eos=True)]
    )
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(
        f"W1-ish torch path: 64 tokens in {elapsed:.2f} s = {64 / elapsed:.1f} tok/s "
        f"({len(out['w1'][0].token_ids)} tokens)"
    )


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    versions()
    with tempfile.TemporaryDirectory() as tmp:
        parity(Path(tmp))
        w1_torch_path(Path(tmp))


if __name__ == "__main__":
    main()
