# The batch-1 decode kernels of the Qwen3-30B-A3B shape on a lent machine with one GPU, correctness
# first: the early-launch test (decode with and without programmatic dependent launch, bit for bit)
# and the MoE GPU tests; then the few-token MoE tile sweep, the dense projections' tile sweep, W1
# against its roofline with early launch on and off, and where the W1 step goes. Two calls, each
# within the 10-minute limit (the second on the warm machine: call it at once after the first):
#   bash bench/device_w1_kernels.sh kernels   # tests + sweeps (~5 min)
#   bash bench/device_w1_kernels.sh w1        # W1 on/off + profile (~5 min)
# Carry .whl (bash bench/device_wheels.sh). Results: $OUT/*.json and the printed tables.
source bench/device_env.sh || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
date -u
case "${1:-kernels}" in
kernels)
    echo "=== GPU tests: early launch, MoE"
    timeout 150 python -m pytest -q -x tests/gpu/test_moe_gpu.py \
        "tests/gpu/test_engine_gpu.py::test_early_launch_changes_no_bit_on_gpu" 2>&1 | tail -4
    echo "=== few-token MoE: tiles (gate-up, then down-and-combine)"
    timeout 200 python bench/moe_microbench.py --batches 1,4 --gemv-sweep --json "$OUT/moe.json" 2>&1 |
        grep -v -i warn | tail -14
    echo "=== dense projections of the Qwen3-30B-A3B shape: gemv tiles"
    timeout 90 python bench/decode_kernels_microbench.py --model qwen3-30b-a3b 2>&1 | grep -v Warning | tail -6
    ;;
w1)
    echo "=== W1, early launch on"
    EPOCHSERVE_PDL=1 timeout 120 python bench/moe_w1_w5.py --w1-only --skip-peer --max-num-seqs 8 \
        --json "$OUT/w1_pdl.json" 2>&1 | grep -v -i warn | tail -4
    echo "=== W1, early launch off"
    EPOCHSERVE_PDL=0 timeout 120 python bench/moe_w1_w5.py --w1-only --skip-peer --max-num-seqs 8 \
        --json "$OUT/w1_nopdl.json" 2>&1 | grep -v -i warn | tail -4
    echo "=== where the W1 step goes (early launch on)"
    EPOCHSERVE_PDL=1 timeout 150 python bench/profile_moe_w1.py --rows 24 2>&1 | tail -27
    ;;
esac
