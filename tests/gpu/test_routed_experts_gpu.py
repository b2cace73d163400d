"""Routing replay on CUDA: decode steps replayed from CUDA graphs (and run ahead) return the same
routed experts as eager steps, and those agree with transformers' router.

Run on a GPU machine: `python -P -m pytest -q tests/gpu/test_routed_experts_gpu.py` (skips without
CUDA). fp32 weights; the Triton kernels' fp32 dots use TF32, so a routing whose top-k margin lies
within that rounding may differ from transformers' full-fp32 router: agreement is bounded, not exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.engine import make_engine, make_request, run_to_completion
from fixtures.moe import compare_routing, hf_router_probs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def routed_runs(model_dir, **engine_args):
    engine = make_engine(model_dir, device="cuda", dtype="float32", block_size=4, **engine_args)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 512, (n,), generator=generator).tolist() for n in (3, 9, 17, 30)]
    requests = [
        make_request(f"g{i}", p, engine.limits, n=2, temperature=0.0, max_tokens=16, ignore_eos=True,
                     return_routed_experts=True)
        for i, p in enumerate(prompts)
    ]  # fmt: skip
    return engine, prompts, run_to_completion(engine, requests)


@pytest.mark.parametrize("kind", ["qwen3_moe", "qwen2_moe"])
def test_graph_decode_steps_return_the_eager_routing(kind, tiny_moe_dirs):
    model_dir = tiny_moe_dirs[kind]
    graphs, prompts, with_graphs = routed_runs(model_dir)
    assert graphs.runner.graphs is not None and graphs.num_run_ahead_steps > 0
    _, _, eager = routed_runs(model_dir, cuda_graphs=False, async_scheduling="off")
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    compared = mismatched = 0
    for i, prompt in enumerate(prompts):
        for index, sample in with_graphs[f"g{i}"].items():
            other = eager[f"g{i}"][index]
            assert sample.token_ids == other.token_ids
            for rows in ("prompt_routed_experts", "routed_experts"):
                assert np.array_equal(np.stack(getattr(sample, rows)), np.stack(getattr(other, rows))), rows
            ours = np.stack(sample.prompt_routed_experts + sample.routed_experts[1:]).astype(np.int64)
            ran = prompt + sample.token_ids[:-1]
            agreement = compare_routing(torch.from_numpy(ours), hf_router_probs(reference, ran))
            compared += agreement.compared
            mismatched += agreement.mismatches + agreement.near_ties
    print(f"{kind}: {mismatched} of {compared} (position, layer) routings differ from transformers' fp32")
    assert mismatched <= compared // 50
