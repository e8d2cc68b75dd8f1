#!/usr/bin/env bash
# Session 28's pre-registered confirmation (fc28; docs/benchmarks/flowcontrol.md "Session 28"): session
# 26's confirmation command, unchanged, on the seeds given (fresh 85-87), both shapes, both TTLs, four
# cells at a time; each cell's JSON as OUT/ttl{T}_{shape}_s{S}.json, the load average before and after
# each cell in OUT/loadavg.txt. Run under `flock /work/team/live.lock`. Read with
# `python scripts/fc_confirm_goals_s28.py --dir OUT --seeds 85,86,87`.
set -u
OUT=${1:?usage: fc_confirm_s28.sh OUT [SEEDS]}
SEEDS=${2:-85 86 87}
mkdir -p "$OUT"
cell() {  # ttl shape seed
  local ttl=$1 shape=$2 seed=$3 fleet=()
  [ "$shape" = 2x16 ] && fleet=(--replicas 2 --max-num-seqs 16)
  local dir="$OUT/tmp_ttl${ttl}_${shape}_s${seed}"
  echo "start ttl$ttl $shape s$seed $(date -u +%T) loadavg $(cat /proc/loadavg)" >>"$OUT/loadavg.txt"
  PYTHONPATH=src nice -n 15 "${PYTHON:-/work/main/.venv/bin/python}" -m kvgate.cli bench flowcontrol "${fleet[@]}" \
    --arms reference,kvgate-reserve-feasible --headroom 0.75 --headroom-on pending \
    --ttft-target 0.05 --running-reserve --load 0.9 --seed "$seed" --ttl "$ttl" --out "$dir" \
    >"$OUT/ttl${ttl}_${shape}_s${seed}.txt" 2>&1 &&
    mv "$dir/flowcontrol.json" "$OUT/ttl${ttl}_${shape}_s${seed}.json" && rmdir "$dir"
  echo "end   ttl$ttl $shape s$seed $(date -u +%T) loadavg $(cat /proc/loadavg)" >>"$OUT/loadavg.txt"
}
n=0
for ttl in 1000 30; do
  for shape in 4x128 2x16; do
    for seed in $SEEDS; do
      cell "$ttl" "$shape" "$seed" &
      n=$((n + 1))
      if [ $((n % 4)) -eq 0 ]; then wait; fi
    done
  done
done
wait
