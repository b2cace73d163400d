"""Top-p boundaries on a model with wide next-token distributions, served by a real worker process at
TP=1 and TP=2 (gloo), against transformers (fp32, same weights).

A random model with small weights puts thousands of tokens inside each nucleus, so some positions
have a boundary within fp32 noise of top_p; trained models hide that. With the engine's support
sizes, the trainer's recompute (epochserve.sampling.reference) matches at every position; without
them, it matches everywhere except at counted positions whose boundary lies within that noise.
"""

import pytest
import torch
from fixtures.engine import hf_model, hf_next_token_logits, hf_processed_logprobs
from fixtures.grpc_client import generate
from fixtures.models import build_tiny_model
from fixtures.processes import running_worker

from epochserve.sampling import SamplingParams
from epochserve.sampling.reference import as_float32, rule_support_sizes, scaled_logits, token_logprobs

CASES = [
    dict(temperature=1.0, top_p=0.8),
    dict(temperature=1.2, top_p=0.9),
    dict(temperature=1.5, top_p=0.99),
    dict(temperature=1.3, top_p=0.95, min_p=0.2),
]
MAX_TOKENS = 32
TOLERANCE = 1e-4  # the contract's bound between engine and trainer logprobs (fp32, CPU)
NOISE_MARGIN = 1e-5  # an fp32 prefix sum over this vocabulary is off by less than this


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    # initializer_range 0.02 (the default 0.2 of the tiny models makes logits peaked): next-token
    # distributions over 8,192 tokens are then close to uniform, thousands of tokens per nucleus.
    return build_tiny_model(
        "llama", tmp_path_factory.mktemp("wide") / "llama", seed=3, vocab_size=32768, initializer_range=0.02
    )


def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(8)
    return [torch.randint(3, 32768, (n,), generator=generator).tolist() for n in (2, 9, 17, 30)]


def top_p_margin(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[positions]: distance from top_p of the nearest mass-before in the trainer's own fp64 masses."""
    ranked = scaled_logits(logits, params).sort(dim=-1, descending=True).values.double()
    mass_before = ranked.softmax(dim=-1).cumsum(dim=-1)
    return (mass_before - as_float32(params.top_p)).abs().min(dim=-1).values


@pytest.mark.parametrize("tp", [1, 2])
def test_support_sizes_make_the_trainers_recompute_exact_at_every_position(tp, wide_model, tmp_path):
    reference = hf_model(wide_model)
    num_positions = num_boundary = 0
    with running_worker(wide_model, tmp_path, "--tp", str(tp), name=f"wide-tp{tp}") as worker:
        for c, case in enumerate(CASES):
            params = SamplingParams(**case, return_support_size=True)
            for i, prompt in enumerate(prompts()):
                [sample] = generate(
                    worker.address, prompt, request_id=f"{c}-{i}", max_tokens=MAX_TOKENS,
                    ignore_eos=True, seed=10 * c + i, return_support_size=True, **case,
                ).values()  # fmt: skip
                assert len(sample.support_sizes) == len(sample.token_ids) == MAX_TOKENS
                logits = hf_next_token_logits(reference, prompt, sample.token_ids)
                tokens = torch.tensor(sample.token_ids)
                engine = torch.tensor(sample.logprobs)
                sizes = torch.tensor(sample.support_sizes)
                # 1. With the engine's support sizes: within the tolerance at every position.
                exact = token_logprobs(logits, tokens, params, sizes)
                assert (exact - engine).abs().max().item() <= TOLERANCE, (tp, case, i)
                # 2. transformers' own warpers: the same, except where their support differs.
                hf = hf_processed_logprobs(logits, **case)
                hf_sizes = torch.isfinite(hf).sum(dim=-1)
                agree = hf_sizes == sizes
                hf_token = hf.gather(1, tokens[:, None])[:, 0]
                assert (hf_token - engine)[agree].abs().max().item() <= TOLERANCE, (tp, case, i)
                # 3. The exact rule on the trainer's logits departs from the engine only where the
                #    boundary is within fp32 noise of top_p.
                departs = rule_support_sizes(scaled_logits(logits, params), params) != sizes
                departs_hf = ~agree
                if departs.any():
                    assert (top_p_margin(logits[departs], params) < NOISE_MARGIN).all(), (tp, case, i)
                num_boundary += int((departs | departs_hf).sum())
                num_positions += MAX_TOKENS
    # Boundary positions are rare (the nearest mass lies within 1e-5 of top_p at ~1% of them).
    assert num_boundary <= 0.05 * num_positions, (num_boundary, num_positions)


def test_the_same_prompts_alone_and_in_a_batch_of_16_keep_the_same_support(wide_model):
    """batch_invariant (CPU: products in fixed row slices): a request's logits are the same bits
    alone and among 15 others, so its top-p support, tokens and logprobs are too."""
    from fixtures.engine import make_engine, make_request, run_to_completion

    engine = make_engine(wide_model, batch_invariant=True, enable_prefix_cache=False)
    batch = [torch.randint(3, 32768, (n,), generator=torch.Generator().manual_seed(n)).tolist()
             for n in range(2, 34, 2)]  # fmt: skip
    case = dict(temperature=1.2, top_p=0.9, max_tokens=12, ignore_eos=True, return_support_size=True)
    requests = [make_request(f"r{i}", p, engine.limits, seed=i, **case) for i, p in enumerate(batch)]
    together = run_to_completion(engine, requests)
    assert len(requests) == 16
    for i, request in enumerate(requests):
        alone = run_to_completion(engine, [request])[request.request_id][0]
        among = together[request.request_id][0]
        assert alone.support_sizes == among.support_sizes and len(alone.support_sizes) == 12
        assert (alone.token_ids, alone.logprobs) == (among.token_ids, among.logprobs), i
