# GPU runs for #21 (the batch-1 decode kernels of the Qwen3-30B-A3B shape) and #20 (HTTP vs gRPC) on
# a lent machine with one GPU, correctness first. Each mode fits the 10-minute limit; `all` runs
# http, w1 and kernels in one call (~9 min):
#   bash bench/device_w1_kernels.sh http      # bench/http_vs_grpc.py, 4 HTTP front processes, 4 and 1
#                                             # client processes (~3 min)
#   bash bench/device_w1_kernels.sh w1        # W1: engine tiles vs the long-row gemv tiles, profile (~2 min)
#   bash bench/device_w1_kernels.sh kernels   # MoE GPU tests, few-token MoE variants and tiles, dense tiles
# Carry .whl (bash bench/device_wheels.sh http) and, for http, .device/smol (SmolLM2's config and
# tokenizer files). Results: $OUT/*.json and the printed tables.
source bench/device_env.sh || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
date -u
mode=${1:-kernels}
http() {  # $1: client processes
    echo "=== HTTP front vs gRPC (SmolLM2 shape, tiny weights), 4 front processes, $1 client processes"
    timeout 200 python bench/http_vs_grpc.py --model .device/smol --weights tiny --device cuda \
        --requests 256 --new-tokens 64 --rounds 5 --worker-arg=--max-num-seqs=512 \
        --router-arg=--http-processes=4 --client-processes "${1:-4}" --json "$OUT/http4_c${1:-4}.json" 2>&1 |
        grep -v -i warn | tail -6
}
if [ "$mode" = http ] || [ "$mode" = all ]; then
    http 4
fi
if [ "$mode" = w1 ] || [ "$mode" = all ]; then
    echo "=== GPU tests: gemv (its tiles changed)"
    timeout 60 python -m pytest -q -x tests/gpu/test_kernels_gpu.py -k gemv 2>&1 | tail -2
    echo "=== W1, the engine's gemv tiles"
    EPOCHSERVE_PDL=0 timeout 100 python bench/moe_w1_w5.py --w1-only --skip-peer --max-num-seqs 8 \
        --json "$OUT/w1_engine.json" 2>&1 | grep -v -i warn | tail -3
    echo "=== W1, the long-row gemv tiles everywhere (before 52996ef)"
    EPOCHSERVE_PDL=0 timeout 100 python bench/moe_w1_w5.py --w1-only --skip-peer --max-num-seqs 8 \
        --large-gemv-tiles --json "$OUT/w1_large.json" 2>&1 | grep -v -i warn | tail -3
    echo "=== where the W1 step goes"
    EPOCHSERVE_PDL=0 timeout 100 python bench/profile_moe_w1.py --rows 16 2>&1 | tail -19
fi
if [ "$mode" = kernels ] || [ "$mode" = all ]; then
    echo "=== few-token MoE: gate-up tiles, then down-and-combine tiles"
    timeout 200 python bench/moe_microbench.py --batches 1,4 --gemv-sweep --json "$OUT/moe.json" 2>&1 |
        grep -v -i warn | tail -14
    echo "=== dense projections of the Qwen3-30B-A3B shape: gemv tiles"
    timeout 60 python bench/decode_kernels_microbench.py --model qwen3-30b-a3b 2>&1 | grep -v Warning | tail -5
    echo "=== dense projections of the Llama-3.1-8B shape: gemv tiles"
    timeout 90 python bench/decode_kernels_microbench.py 2>&1 | grep -v Warning | grep -A5 "projections at 1 row"
    echo "=== GPU tests: MoE"
    timeout 100 python -m pytest -q -x tests/gpu/test_moe_gpu.py 2>&1 | tail -2
fi
if [ "$mode" = http ] || [ "$mode" = all ]; then
    http 1
fi
