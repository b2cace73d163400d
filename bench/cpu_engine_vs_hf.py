"""CPU parity benchmark (docs/design.md §8): the engine vs transformers `generate` on SmolLM2.

16 requests x 64 new tokens (greedy, EOS ignored), the same prompts for every contender:
  - engine: all 16 submitted at once (continuous batching, paged KV);
  - hf-batched: one `generate` call over the 16 prompts, left-padded;
  - hf-sequential: `generate` once per request (how a single-request server would run them).
Prints the median output tokens/s over --repeats runs and the engine's ratio to each.
Usage: python bench/cpu_engine_vs_hf.py [--repeats 3] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from epochserve.proto.convert import ParsedGenerateRequest
from epochserve.sampling import SamplingParams
from epochserve.worker.config import EngineConfig
from epochserve.worker.engine.engine import Engine
from epochserve.worker.models.bundled import prepare_smollm2

NUM_REQUESTS = 16
NEW_TOKENS = 64


def make_prompts(seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 129, (NUM_REQUESTS,), generator=generator).tolist()
    return [torch.randint(100, 40000, (n,), generator=generator).tolist() for n in lengths]


def run_engine(engine: Engine, prompts: list[list[int]], tag: str) -> tuple[float, list[list[int]]]:
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=NEW_TOKENS)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(
            ParsedGenerateRequest(f"{tag}-{i}", tuple(prompt), params, 1, NEW_TOKENS, None, None)
        )
    outputs: dict[str, list[int]] = {f"{tag}-{i}": [] for i in range(len(prompts))}
    while engine.has_work():
        for out in engine.step():
            outputs[out.request_id].extend(out.token_ids)
    elapsed = time.perf_counter() - start
    return elapsed, [outputs[f"{tag}-{i}"] for i in range(len(prompts))]


@torch.no_grad()
def run_hf_sequential(model, prompts: list[list[int]]) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    results = []
    for prompt in prompts:
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
        )
        results.append(out[0, len(prompt) :].tolist())
    return time.perf_counter() - start, results


@torch.no_grad()
def run_hf_batched(model, prompts: list[list[int]]) -> tuple[float, list[list[int]]]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=0,
    )
    return time.perf_counter() - start, out[:, width:].tolist()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    model_dir = prepare_smollm2()
    prompts = make_prompts()
    engine = Engine(EngineConfig(model_dir=model_dir, enable_prefix_cache=False))
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    run_engine(engine, prompts[:2], "warmup")
    total_tokens = NUM_REQUESTS * NEW_TOKENS
    times: dict[str, list[float]] = {"engine": [], "hf-batched": [], "hf-sequential": []}
    for r in range(args.repeats):
        t, engine_out = run_engine(engine, prompts, f"r{r}")
        times["engine"].append(t)
        t, _ = run_hf_batched(hf, prompts)
        times["hf-batched"].append(t)
        t, sequential_out = run_hf_sequential(hf, prompts)
        times["hf-sequential"].append(t)
    same = sum(a == b for a, b in zip(engine_out, sequential_out, strict=True))
    throughput = {name: total_tokens / statistics.median(ts) for name, ts in times.items()}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "requests": NUM_REQUESTS,
        "new_tokens": NEW_TOKENS,
        "median_seconds": {name: statistics.median(ts) for name, ts in times.items()},
        "output_tokens_per_s": throughput,
        "engine_vs_hf_batched": throughput["engine"] / throughput["hf-batched"],
        "engine_vs_hf_sequential": throughput["engine"] / throughput["hf-sequential"],
        "greedy_outputs_identical_to_hf_sequential": f"{same}/{NUM_REQUESTS}",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"\n{'contender':16} {'median s':>9} {'out tok/s':>10}")
    for name in times:
        print(f"{name:16} {result['median_seconds'][name]:9.2f} {throughput[name]:10.1f}")
    print(
        f"engine / hf-batched = {result['engine_vs_hf_batched']:.2f}x, "
        f"engine / hf-sequential = {result['engine_vs_hf_sequential']:.2f}x"
    )


if __name__ == "__main__":
    main()
