#!/usr/bin/env bash
# Session 31's pre-registered head-to-head (fc31; docs/benchmarks/flowcontrol.md "Session 31"): session
# 28's confirmation command per cell, ONE run per cell with four arms side by side: the reference, the
# goal configuration as shipped (`kvgate-reserve-feasible`), it with flowControl.packCertainMisses
# (`...+pack`) and with flowControl.prefillAlonePick (`...+alone`); both shapes, both TTLs, the seeds
# given (fresh 94-96, then 97-99). Each cell's JSON as OUT/ttl{T}_{shape}_s{S}.json, the load average
# before and after each run in OUT/loadavg.txt, four runs at a time. Run under
# `flock /work/team/live.lock`. Read with `python scripts/fc_confirm_goals_s31.py --dir OUT --seeds 94,95,96`.
set -u
OUT=${1:?usage: fc_confirm_s31.sh OUT [SEEDS]}
SEEDS=${2:-94 95 96}
ARMS=reference,kvgate-reserve-feasible,kvgate-reserve-feasible+pack,kvgate-reserve-feasible+alone
mkdir -p "$OUT"
cell() {  # ttl shape seed
  local ttl=$1 shape=$2 seed=$3 fleet=()
  [ "$shape" = 2x16 ] && fleet=(--replicas 2 --max-num-seqs 16)
  local dir="$OUT/tmp_ttl${ttl}_${shape}_s${seed}"
  echo "start ttl$ttl $shape s$seed $(date -u +%T) loadavg $(cat /proc/loadavg)" >>"$OUT/loadavg.txt"
  PYTHONPATH=src nice -n 15 "${PYTHON:-/work/main/.venv/bin/python}" -m kvgate.cli bench flowcontrol "${fleet[@]}" \
    --arms "$ARMS" --headroom 0.75 --headroom-on pending \
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
