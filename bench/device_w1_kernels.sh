# GPU runs for #21 (the batch-1 decode kernels of the Qwen3-30B-A3B shape) and #20 (HTTP vs gRPC) on
# a lent machine with one GPU, correctness first. Each mode fits the 10-minute limit; `all` runs
# http, w1 and kernels in one call (~9 min):
#   bash bench/device_w1_kernels.sh http [N]  # bench/http_vs_grpc.py, 4 HTTP front processes, 4 and 1
#                                             # client processes, or N only (~3 min); HTTP_TOKENS=256
#                                             # for longer samples (default 64), and
#                                             # HTTP_MIN_TOKENS=64 for lengths drawn from 64-256;
#                                             # HTTP_REQUESTS=1024 for more requests than the
#                                             # worker's 512 slots (default 256, one wave);
#                                             # HTTP_MODES=final: whole responses only;
#                                             # EPOCHSERVE_MERGE_CHUNKS=0: the router forwards
#                                             # each STREAM chunk as it came (router/attempt.py)
#   bash bench/device_w1_kernels.sh w1        # W1: engine tiles vs the long-row gemv tiles, profile (~2 min)
#   bash bench/device_w1_kernels.sh kernels   # MoE GPU tests, few-token MoE variants and tiles, dense tiles
#   bash bench/device_w1_kernels.sh dense     # W1/W2 of the 8B Llama shape, bench/w1_w2.py (~3 min)
#   bash bench/device_w1_kernels.sh pdl       # the launch switches (norms folded into gemv, attention
#                                             # partitions folded in-kernel, early launch): kernel GPU
#                                             # tests, W1 turning each on in turn, engine GPU tests,
#                                             # then the projection microbench (~5 min)
#   bash bench/device_w1_kernels.sh rotary    # rotary + KV store folded into decode attention
#                                             # (EPOCHSERVE_ROTARY_ATTENTION): its GPU tests, then W1
#                                             # off / on / off / on (~4 min)
#   bash bench/device_w1_kernels.sh defaults  # the GPU tests of the default launch path (norms folded,
#                                             # launch switches, few-token MoE), then W1 (~3 min)
# Carry .whl (bash bench/device_wheels.sh http) and, for http, .device/smol (SmolLM2's config and
# tokenizer files). Results: $OUT/*.json and the printed tables.
source bench/device_env.sh || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
date -u
mode=${1:-kernels}
http() {  # $1: client processes; HTTP_TOKENS: new tokens a sample (default 64); HTTP_MIN_TOKENS:
    # each request's drawn from [HTTP_MIN_TOKENS, HTTP_TOKENS] instead
    echo "=== HTTP front vs gRPC (SmolLM2 shape, tiny weights), 4 front processes, $1 client processes," \
        "${HTTP_REQUESTS:-256} requests"
    timeout 280 python bench/http_vs_grpc.py --model .device/smol --weights tiny --device cuda \
        --requests "${HTTP_REQUESTS:-256}" --new-tokens "${HTTP_TOKENS:-64}" --min-new-tokens "${HTTP_MIN_TOKENS:-0}" \
        --rounds 3 --worker-arg=--max-num-seqs=512 --router-arg=--http-processes=4 --client-processes "${1:-4}" \
        --modes "${HTTP_MODES:-final,stream}" --json "$OUT/http4_c${1:-4}_r${HTTP_REQUESTS:-256}_t${HTTP_MIN_TOKENS:-0}-${HTTP_TOKENS:-64}_m${EPOCHSERVE_MERGE_CHUNKS:-1}.json" 2>&1 |
        grep -v -i warn | tail -6
}
if [ "$mode" = http ] || [ "$mode" = all ]; then
    http "${2:-4}"  # `http 1`: one client process only
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
if { [ "$mode" = http ] && [ -z "$2" ]; } || [ "$mode" = all ]; then
    http 1
fi
if [ "$mode" = pdl ]; then
    echo "=== GPU tests: attention fold, router top-k fold, gemv and add-norm gemv kernels; few-token MoE"
    timeout 100 python -m pytest -q -x tests/gpu/test_kernels_gpu.py -k "gemv or folded or routes" 2>&1 | tail -3
    timeout 100 python -m pytest -q -x tests/gpu/test_moe_gpu.py -k "few_token or cuda_graph" 2>&1 | tail -3
    # W1 with each switch turned on in turn (PDL NORM_GEMV ATTENTION_FOLD; ~25 s a run)
    for flags in "0 0 0" "0 1 0" "0 1 1" "1 0 1" "1 1 1"; do
        set -- $flags
        echo "=== W1, EPOCHSERVE_PDL=$1 NORM_GEMV=$2 ATTENTION_FOLD=$3"
        EPOCHSERVE_PDL=$1 EPOCHSERVE_NORM_GEMV=$2 EPOCHSERVE_ATTENTION_FOLD=$3 \
            timeout 100 python bench/moe_w1_w5.py --w1-only --skip-peer --max-num-seqs 8 \
            --json "$OUT/w1_switches_$1$2$3.json" 2>&1 | grep -v -i warn | tail -1
    done
    echo "=== GPU tests: the switches in the engine (decode bytes with and without; norms folded vs HF)"
    timeout 150 python -m pytest -q -x tests/gpu/test_engine_gpu.py -k "launch_switches or with_and_without_norms_folded" 2>&1 |
        tail -1
    echo "=== Qwen3-30B-A3B projections, add-norm + projection"
    EPOCHSERVE_PDL=0 timeout 90 python bench/decode_kernels_microbench.py --model qwen3-30b-a3b 2>&1 |
        grep -v Warning | tail -9
fi
if [ "$mode" = defaults ]; then
    echo "=== GPU tests: batch-1 greedy with the norms folded and not (dense vs transformers, MoE vs the"
    echo "    engine without the fold), launch switches, the few-token MoE path"
    timeout 200 python -m pytest -q -s tests/gpu/test_engine_gpu.py -k "norms_folded or launch_switches" 2>&1 |
        grep "greedy (\|norm fold,\|passed\|failed"
    timeout 100 python -m pytest -q tests/gpu/test_moe_gpu.py -k "few_token or cuda_graph" 2>&1 | tail -1
    echo "=== W1, defaults"
    timeout 100 python bench/moe_w1_w5.py --w1-only --skip-peer --max-num-seqs 8 \
        --json "$OUT/w1_defaults.json" 2>&1 | grep -v -i warn | tail -1
fi
if [ "$mode" = rotary ]; then
    echo "=== GPU tests: the rotary fold's kernel against the separate launches, and in the engine"
    timeout 120 python -m pytest -q -s tests/gpu/test_kernels_gpu.py -k rotary_folded 2>&1 |
        grep "differ from\|passed\|failed"
    for flag in 0 1 0 1; do  # alternated: a drift of the card shows as a difference between repeats
        echo "=== W1, EPOCHSERVE_ROTARY_ATTENTION=$flag"
        EPOCHSERVE_ROTARY_ATTENTION=$flag timeout 100 python bench/moe_w1_w5.py --w1-only --skip-peer \
            --max-num-seqs 8 --json "$OUT/w1_rotary_$flag.json" 2>&1 | grep -v -i warn | tail -1
    done
fi
if [ "$mode" = dense ]; then
    echo "=== W1/W2, Llama-3.1-8B shape (no peer)"
    EPOCHSERVE_PDL=0 timeout 280 python bench/w1_w2.py --skip-peer --json "$OUT/w1_w2.json" 2>&1 |
        grep -v -i warn | tail -8
fi
