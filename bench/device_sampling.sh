# The sampling path on a lent GPU, in one call: GPU tests (the fp64 boundary on CUDA, the fused
# sort-free kernels against the sorted path, the batch-invariant support sizes, the noise), the
# sampler microbenchmark, then W1/W2 (greedy: their steps never filter, so they must not move; left
# out with SAMPLING_ONLY=1). Usage: bash bench/device_sampling.sh (carry .whl).
source bench/device_env.sh || exit 1
export EPOCHSERVE_FUSED_SAMPLER=1  # the fused sort-free sampler is opt-in on CUDA until measured here
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
date -u; git log -1 --format='commit %h' 2>/dev/null
echo "== GPU tests"
timeout 240 python3 -m pytest -q -s tests/gpu/test_sampling_gpu.py --tb=short 2>&1 | grep -vi warn | tail -30
timeout 150 python3 -m pytest -q -s tests/gpu/test_engine_gpu.py \
    -k "support or batch_invariance or noise or fp32_on_gpu" 2>&1 | grep -vi warn | tail -12
echo "== sampler microbenchmark"
timeout 150 python3 bench/sampler_microbench.py --json "$OUT/sampler.json" 2>&1 | tail -30
[ -n "$SAMPLING_ONLY" ] && exit 0
echo "== W1/W2"
timeout 240 python3 bench/w1_w2.py --skip-peer --json "$OUT/w1_w2.json" 2>&1 | tail -8
