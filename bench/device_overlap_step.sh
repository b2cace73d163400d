# bench/overlap_step.py on a lent machine with one GPU (#23): a decode step during drain=overlap
# against the same 256 sequences on one version, in one engine, at two graph bucket steps (32, the
# default, with its kernels profiled; then 16), each against the one-more-weight-read bound (~5 min).
# Usage on the lent machine, from the repo root (carry .whl, filled by bench/device_wheels.sh):
#   bash bench/device_overlap_step.sh [more bench/overlap_step.py flags]
# Results: $OUT/overlap_step_32.json, $OUT/overlap_step_16.json and the printed tables.
source bench/device_env.sh || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
date -u
shown() { grep -v -i "warn\|it/s\]\|USDT" | tail -40; }
echo "=== overlap step, graph bucket step 32 (the default), kernels profiled"
timeout 200 python bench/overlap_step.py --graph-bucket-step 32 --splits 16,64,128 --profile 8 \
    --json "$OUT/overlap_step_32.json" "$@" 2>&1 | shown
echo "=== overlap step, graph bucket step 16"
timeout 200 python bench/overlap_step.py --graph-bucket-step 16 --splits 16,64,128 \
    --json "$OUT/overlap_step_16.json" "$@" 2>&1 | shown
date -u
