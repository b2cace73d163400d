"""Engine behaviour on a tiny Llama: seeds, prefix cache by version, preemption, n samples, guards."""

import pytest
import torch
from fixtures.engine import make_engine, make_request, run_to_completion

from epochserve.errors import InvalidRequestError, VersionMismatchError
from epochserve.worker.engine.sequence import FinishReason


@pytest.fixture(scope="module")
def llama_dir(tiny_model_dirs):
    return tiny_model_dirs["llama"]


@pytest.fixture()
def engine(llama_dir):
    return make_engine(llama_dir, block_size=4, num_kv_blocks=128)


PROMPT = [5, 17, 33, 9, 100, 200, 300, 7, 8, 11]


def test_same_seed_replays_and_different_seeds_differ(engine):
    def sample(seed, rid):
        req = make_request(rid, PROMPT, engine.limits, seed=seed, max_tokens=16, ignore_eos=True)
        return run_to_completion(engine, [req])[rid][0]

    a, b, c = sample(7, "a"), sample(7, "b"), sample(8, "c")
    assert a.token_ids == b.token_ids
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)  # b reuses a's cached prompt blocks
    assert a.token_ids != c.token_ids
    assert a.finish.seed == 7


def test_unseeded_requests_report_the_seed_they_used(engine):
    rid = "u"
    result = run_to_completion(
        engine, [make_request(rid, PROMPT, engine.limits, max_tokens=6, ignore_eos=True)]
    )[rid][0]
    replay = make_request("u2", PROMPT, engine.limits, max_tokens=6, ignore_eos=True, seed=result.finish.seed)
    assert run_to_completion(engine, [replay])["u2"][0].token_ids == result.token_ids


def test_prefix_cache_hits_a_repeated_prompt_and_misses_under_another_version(engine):
    prompt = list(range(10, 30))  # 5 full blocks of 4

    def once(rid):
        req = make_request(rid, prompt, engine.limits, temperature=0.0, max_tokens=5, ignore_eos=True)
        return run_to_completion(engine, [req])[rid][0]

    first = once("first")
    hits_before = engine.block_usage().prefix_cache_hits
    second = once("second")
    assert engine.block_usage().prefix_cache_hits - hits_before == 4  # all but the last prompt block
    assert second.finish.prefix_cache_hit_blocks == 4
    assert second.token_ids == first.token_ids
    assert second.logprobs == pytest.approx(first.logprobs, abs=1e-5)

    engine.set_policy_version(1)
    hits_before = engine.block_usage().prefix_cache_hits
    third = once("third")
    assert engine.block_usage().prefix_cache_hits == hits_before  # v0 blocks are invisible under v1
    assert third.finish.prefix_cache_hit_blocks == 0
    assert third.policy_versions == {1}


def test_preemption_gives_the_same_results_as_an_ample_pool(llama_dir):
    prompts = [list(range(3 + i, 3 + i + 6 + 3 * i)) for i in range(6)]

    def run(num_blocks):
        engine = make_engine(llama_dir, block_size=4, num_kv_blocks=num_blocks)
        requests = [
            make_request(f"p{i}", p, engine.limits, seed=i, max_tokens=20, ignore_eos=True)
            for i, p in enumerate(prompts)
        ]
        results = run_to_completion(engine, requests)
        return engine, {rid: samples[0] for rid, samples in results.items()}

    ample_engine, ample = run(512)
    small_engine, small = run(14)  # a few sequences' worth: the batch cannot all stay resident
    assert sum(s.finish.num_preemptions for s in small.values()) > 0
    # the engine's count (GetWorkerInfo.num_preemptions) is the responses' total
    assert small_engine.num_preemptions == sum(s.finish.num_preemptions for s in small.values())
    assert ample_engine.num_preemptions == 0
    for rid, sample in ample.items():
        assert small[rid].token_ids == sample.token_ids, rid
        assert small[rid].logprobs == pytest.approx(sample.logprobs, abs=1e-5), rid
    assert small_engine.block_usage().num_free == 14  # everything returned


def test_n_samples_share_the_prompt_blocks_and_are_independent(engine):
    prompt = list(range(40, 57))  # 17 tokens: 4 full blocks + 1
    req = make_request("n4", prompt, engine.limits, n=4, seed=3, max_tokens=12, ignore_eos=True)
    engine.add_request(req)
    for _ in range(3):  # leader's prefill, then the siblings join
        engine.step()
    seqs = engine._requests["n4"]
    leader_blocks = seqs[0].block_table[:4]
    assert all(s.block_table[:4] == leader_blocks for s in seqs)
    assert [engine.block_manager.blocks[b].ref_count for b in leader_blocks] == [4, 4, 4, 4]
    assert len({s.block_table[4] for s in seqs}) == 4  # the partial last block is private
    while engine.has_work():
        engine.step()
    samples = [s.output_token_ids for s in seqs]
    assert len({tuple(t) for t in samples}) == 4  # independent draws
    assert all(len(t) == 12 for t in samples)


def test_stop_tokens_eos_and_max_tokens(engine):
    greedy = run_to_completion(
        engine, [make_request("g", PROMPT, engine.limits, temperature=0.0, max_tokens=10, ignore_eos=True)]
    )["g"][0]
    stop_at = greedy.token_ids[3]
    stopped = run_to_completion(
        engine,
        [
            make_request(
                "s",
                PROMPT,
                engine.limits,
                temperature=0.0,
                max_tokens=10,
                ignore_eos=True,
                stop_token_ids=frozenset({stop_at}),
            )
        ],
    )["s"][0]
    first_stop = greedy.token_ids.index(stop_at)
    assert stopped.token_ids == greedy.token_ids[: first_stop + 1]  # the stop token is returned
    assert stopped.finish.reason is FinishReason.STOP
    assert greedy.finish.reason is FinishReason.LENGTH and len(greedy.token_ids) == 10


def test_eos_ends_a_sample_unless_ignored(llama_dir, tmp_path):
    engine = make_engine(llama_dir, block_size=4, num_kv_blocks=64)
    greedy = run_to_completion(
        engine, [make_request("g", PROMPT, engine.limits, temperature=0.0, max_tokens=8, ignore_eos=True)]
    )["g"][0]
    engine.eos_token_ids = frozenset({greedy.token_ids[2]})
    ended = run_to_completion(
        engine, [make_request("e", PROMPT, engine.limits, temperature=0.0, max_tokens=8)]
    )["e"][0]
    assert ended.token_ids == greedy.token_ids[: greedy.token_ids.index(greedy.token_ids[2]) + 1]
    assert ended.finish.reason is FinishReason.STOP


def test_abort_frees_blocks_at_once(engine):
    engine.add_request(make_request("a", PROMPT, engine.limits, max_tokens=50, ignore_eos=True))
    engine.step()
    assert engine.block_usage().num_free < 128
    outputs = engine.abort_request("a", "client")
    assert [o.finish.reason for o in outputs] == [FinishReason.ABORT]
    assert outputs[0].finish.abort_reason == "client"
    assert engine.block_usage().num_free == 128 and not engine.has_work()


def test_duplicate_ids_and_wrong_version_pins_are_refused(engine):
    engine.add_request(make_request("d", PROMPT, engine.limits, max_tokens=2))
    with pytest.raises(InvalidRequestError):
        engine.add_request(make_request("d", PROMPT, engine.limits, max_tokens=2))
    with pytest.raises(VersionMismatchError):
        engine.add_request(make_request("v", PROMPT, engine.limits, max_tokens=2, policy_version=5))


def test_non_finite_logits_fail_only_that_request(llama_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in llama_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(broken / "model.safetensors")
    poison = 77
    weights["model.embed_tokens.weight"][poison] = float("nan")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    engine = make_engine(broken, block_size=4, num_kv_blocks=64)
    results = run_to_completion(
        engine,
        [
            make_request("bad", [5, poison, 9], engine.limits, temperature=0.0, max_tokens=4),
            make_request("good", [5, 6, 9], engine.limits, temperature=0.0, max_tokens=4, ignore_eos=True),
        ],
    )
    assert results["bad"][0].finish.reason is FinishReason.ERROR
    assert results["bad"][0].token_ids == []  # no token from the failing step
    assert "non-finite" in results["bad"][0].finish.error
    assert len(results["good"][0].token_ids) == 4
    assert torch.isfinite(torch.tensor(results["good"][0].logprobs)).all()


def test_a_sharded_checkpoint_loads_like_a_single_file(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(llama_dir).save_pretrained(sharded, max_shard_size="100KB")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    assert (sharded / "model.safetensors.index.json").is_file()
    results = []
    for model_dir in (llama_dir, sharded):
        engine = make_engine(model_dir, block_size=4, num_kv_blocks=64)
        req = make_request("s", PROMPT, engine.limits, temperature=0.0, max_tokens=8, ignore_eos=True)
        results.append(run_to_completion(engine, [req])["s"][0])
    assert results[0].token_ids == results[1].token_ids
    assert results[0].logprobs == results[1].logprobs
