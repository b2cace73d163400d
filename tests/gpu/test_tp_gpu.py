"""TP=2 against TP=1 on two GPUs of one host (NCCL), through real worker processes.

bf16 weights: the row-parallel layers sum two bf16 partial products where TP=1 sums one, so greedy
sequences may part at a near-tie; they must agree up to the first position where the fp32 margin of
the two candidates is below BF16_LOGIT_TIE, and processed logprobs must agree within
BF16_LOGPROB_TOLERANCE (the bound test_engine_gpu.py puts on the random Llama of its kind).
"""

from __future__ import annotations

import pytest
import torch
from fixtures.engine import hf_next_token_logits, make_engine, make_request, run_to_completion
from fixtures.grpc_client import generate
from fixtures.models import build_tiny_model
from fixtures.processes import running_worker

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices"),
]

BF16_LOGIT_TIE = 0.25
BF16_LOGPROB_TOLERANCE = 0.1


def test_tp2_matches_tp1_on_two_gpus(tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny_model(
        "llama", tmp_path / "m", vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.02,
    )  # fmt: skip
    reference = make_engine(model_dir, device="cuda", dtype="bfloat16")
    fp32 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).float().cuda().eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 4096, (n,), generator=g).tolist() for n in (5, 17, 64, 130)]
    cases = [dict(temperature=0.0), dict(temperature=1.0, seed=3)]
    expected = run_to_completion(reference, [
        make_request(f"{c}-{i}", p, reference.limits, max_tokens=24, ignore_eos=True, **case)
        for c, case in enumerate(cases) for i, p in enumerate(prompts)
    ])  # fmt: skip
    ties, exact = [], 0
    with running_worker(
        model_dir, tmp_path, "--tp", "2", "--device", "cuda", "--dtype", "bfloat16"
    ) as worker:
        for c, case in enumerate(cases):
            for i, prompt in enumerate(prompts):
                [got] = generate(worker.address, prompt, max_tokens=24, ignore_eos=True, **case).values()
                want = expected[f"{c}-{i}"][0]
                assert got.finish.diagnostics.tp_size == 2
                pairs = enumerate(zip(got.token_ids, want.token_ids, strict=True))
                same = next((k for k, (a, b) in pairs if a != b), None)
                if same is None:
                    exact += 1
                    gap = max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs, strict=True))
                    assert gap < BF16_LOGPROB_TOLERANCE
                    continue
                logits = hf_next_token_logits(fp32, prompt, want.token_ids[: same + 1])[same]
                ties.append((logits[want.token_ids[same]] - logits[got.token_ids[same]]).item())
    total = len(prompts) * len(cases)
    print(f"TP=2 vs TP=1: {exact}/{total} identical; fp32 margins at first differences {ties}")
    assert all(abs(t) < BF16_LOGIT_TIE for t in ties), ties
