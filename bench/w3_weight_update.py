"""W3 of docs/design.md §8 on one GPU: staging a new 8B version from a local checkpoint, and the pause.

Measures, on the 8B Llama-3.1 shape (random bf16 weights): the disk's sequential read speed; staging
v1 from a safetensors checkpoint on that disk (read, verify every tensor against the manifest, into
device twins) in GB/s; the generation pause of the swap between two decode steps (in-place copy of
the twins into the live weights, prefix cache dropped), from device twins and from pinned host twins.
    python bench/w3_weight_update.py [--dir /tmp/w3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gpu_common import LLAMA31_8B, write_config


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def read_speed(path: Path) -> float:
    """Sequential read of the file, bytes per second (after dropping the page cache if allowed)."""
    drop_page_cache()
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(64 << 20):
            pass
    return path.stat().st_size / (time.perf_counter() - start)


def hf_tensors(model_config, device: str = "cuda") -> dict[str, torch.Tensor]:
    """A new version: random tensors under the checkpoint names of the model."""
    from epochserve.worker.models.llama import checkpoint_names

    shapes = {"model.embed_tokens.weight": (LLAMA31_8B["vocab_size"], LLAMA31_8B["hidden_size"])}
    h, i = LLAMA31_8B["hidden_size"], LLAMA31_8B["intermediate_size"]
    kv = LLAMA31_8B["num_key_value_heads"] * h // LLAMA31_8B["num_attention_heads"]
    per_layer = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                 "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h),
                 "mlp.down_proj": (h, i), "input_layernorm": (h,),
                 "post_attention_layernorm": (h,)}  # fmt: skip
    out = {}
    for name in checkpoint_names(model_config):
        if name in shapes:
            shape = shapes[name]
        elif name == "lm_head.weight":
            shape = (LLAMA31_8B["vocab_size"], h)
        elif name == "model.norm.weight":
            shape = (h,)
        else:
            shape = per_layer[name.split(".", 3)[3].rsplit(".", 1)[0]]
        out[name] = torch.randn(shape, dtype=torch.bfloat16, device=device) * 0.02
    return out


def pause(engine, prefer_device: bool, source: str, version: int) -> tuple[float, str]:
    """Stage `version`, keep 32 sequences decoding, swap between two steps; the swap's seconds."""
    from fixtures.engine import make_request

    engine.weights.prefer_device = prefer_device
    engine.weights.stage(version, source, None)
    result = engine.weights.wait()
    assert result is not None and result.staged is not None, result
    location = result.staged.location
    for i in range(32):
        engine.add_request(make_request(f"p{version}-{i}", list(range(1000, 1100)), engine.limits,
                                        temperature=0.0, max_tokens=64, ignore_eos=True))  # fmt: skip
    for _ in range(8):
        engine.step()
    for seq in list(engine.scheduler.running):  # drain=abort: the pause alone, without the drain
        engine.abort_request(seq.request_id, "bench")
    engine.begin_drain(version, "abort")
    torch.cuda.synchronize()
    start = time.perf_counter()
    engine.weights.swap(version)
    engine.complete_swap(version)
    torch.cuda.synchronize()
    return time.perf_counter() - start, location


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "epochserve-w3")
    parser.add_argument("--json", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    from fixtures.engine import make_engine

    from epochserve.client.publisher import PolicyPublisher

    args = build_parser().parse_args(argv)
    results: dict = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d")}
    engine = make_engine(write_config(args.dir / "base"), device="cuda", load_format="random",
                         max_model_len=2048, kv_cache_memory_fraction=0.3)  # fmt: skip
    tensors = hf_tensors(engine.model_config)
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    start = time.perf_counter()
    checkpoint = PolicyPublisher.save_checkpoint(1, tensors, args.dir / "v1", config_from=args.dir / "base")
    results["save_seconds"] = time.perf_counter() - start
    del tensors
    torch.cuda.empty_cache()
    results["disk_read_bytes_per_s"] = read_speed(checkpoint / "model.safetensors")
    results["page_cache_dropped"] = drop_page_cache()
    start = time.perf_counter()
    engine.weights.stage(1, str(checkpoint), None)
    staged = engine.weights.wait()
    results["stage_cold_seconds"] = time.perf_counter() - start
    assert staged is not None and staged.staged is not None, staged
    results["stage_cold_bytes_per_s"] = weight_bytes / results["stage_cold_seconds"]
    engine.weights.drop()
    pauses = {}
    for prefer_device, version in ((True, 2), (False, 3), (True, 4)):
        manifest_version = Path(checkpoint / "epochserve-manifest.json")
        text = json.loads(manifest_version.read_text())
        text["version"] = version  # the same bytes published again under a new version number
        manifest_version.write_text(json.dumps(text, sort_keys=True, separators=(",", ":")))
        seconds, location = pause(engine, prefer_device, str(checkpoint), version)
        pauses.setdefault(location, []).append(seconds)
    results["pause_seconds"] = {loc: statistics.median(v) for loc, v in pauses.items()}
    results["weight_bytes"] = weight_bytes
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    gb = 1e9
    print(
        f"\n{results['device']} {results['date']}: "
        f"disk read {results['disk_read_bytes_per_s'] / gb:.2f} GB/s, "
        f"staging {weight_bytes / gb:.1f} GB cold {results['stage_cold_bytes_per_s'] / gb:.2f} GB/s "
        f"(cache dropped: {results['page_cache_dropped']}); swap pause "
        + ", ".join(f"{loc} twins {s * 1000:.1f} ms" for loc, s in results["pause_seconds"].items())
    )
    os._exit(0)


if __name__ == "__main__":
    main()
