"""The engine's Triton path (TritonOps) end to end in the interpreter: same tokens and logprobs as the
PyTorch path on CPU in fp32. On GPUs tests/gpu/test_engine_gpu.py checks it in bf16 and fp32."""

import pytest
from fixtures.engine import make_engine, make_request, run_to_completion


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_triton_path_matches_torch_path(tiny_model_dirs, kind):
    prompts = [[5, 6, 7], list(range(10, 30)), [9] * 17]
    results = {}
    for mode in ("torch", "triton"):
        engine = make_engine(tiny_model_dirs[kind], block_size=16, num_kv_blocks=64, kernel_mode=mode)
        assert engine.kernel_mode == mode
        requests = [
            make_request(f"r{i}", p, engine.limits, temperature=0.9, seed=i, max_tokens=6, ignore_eos=True)
            for i, p in enumerate(prompts)
        ]
        results[mode] = run_to_completion(engine, requests)
    for rid, samples in results["torch"].items():
        assert results["triton"][rid][0].token_ids == samples[0].token_ids
        assert results["triton"][rid][0].logprobs == pytest.approx(samples[0].logprobs, abs=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_rotary_folded_into_decode_attention_changes_no_bit(tiny_model_dirs, kind, monkeypatch):
    """EPOCHSERVE_ROTARY_ATTENTION=1 (kernels/decode_rotary.py): decode steps rotate and store their
    new keys in the attention launch. Tokens and logprobs equal the separate launches' to the bit,
    so the keys it stored for later steps are the same too (Qwen3: with its q/k norm)."""
    prompts = [[5, 6, 7], list(range(10, 30)), [9] * 17]
    results = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("EPOCHSERVE_ROTARY_ATTENTION", flag)
        engine = make_engine(tiny_model_dirs[kind], block_size=16, num_kv_blocks=64, kernel_mode="triton")
        requests = [
            make_request(f"r{i}", p, engine.limits, temperature=0.9, seed=i, max_tokens=6, ignore_eos=True)
            for i, p in enumerate(prompts)
        ]
        results[flag] = {
            rid: (s[0].token_ids, s[0].logprobs) for rid, s in run_to_completion(engine, requests).items()
        }
    assert results["1"] == results["0"]
