#!/usr/bin/env bash
# Session 30b's pre-registered confirmation (fc30; docs/benchmarks/flowcontrol.md "Session 30"): session
# 28's confirmation command twice per cell, on the seeds given (default 91-93, fresh then: 88-90 went to
# fc_confirm_s30.sh, packCertainMisses), both shapes, both TTLs: as shipped (OUT/base/) and with
# flowControl.prefillAlonePick (`--prefill-alone`, OUT/alone/), the reference arm in both runs; each
# cell's JSON as OUT/{base,alone}/ttl{T}_{shape}_s{S}.json, the load average before and after each in
# OUT/loadavg.txt, four runs at a time. Run under `flock /work/team/live.lock`. Read with
# `python scripts/fc_confirm_goals_s30.py --dir OUT --seeds 91,92,93 --variant alone`.
set -u
OUT=${1:?usage: fc_confirm_s30b.sh OUT [SEEDS]}
SEEDS=${2:-91 92 93}
mkdir -p "$OUT/base" "$OUT/alone"
cell() {  # variant ttl shape seed
  local var=$1 ttl=$2 shape=$3 seed=$4 fleet=() extra=()
  [ "$shape" = 2x16 ] && fleet=(--replicas 2 --max-num-seqs 16)
  [ "$var" = alone ] && extra=(--prefill-alone)
  local dir="$OUT/$var/tmp_ttl${ttl}_${shape}_s${seed}"
  echo "start $var ttl$ttl $shape s$seed $(date -u +%T) loadavg $(cat /proc/loadavg)" >>"$OUT/loadavg.txt"
  PYTHONPATH=src nice -n 15 "${PYTHON:-/work/main/.venv/bin/python}" -m kvgate.cli bench flowcontrol "${fleet[@]}" \
    --arms reference,kvgate-reserve-feasible --headroom 0.75 --headroom-on pending \
    --ttft-target 0.05 --running-reserve --load 0.9 --seed "$seed" --ttl "$ttl" "${extra[@]}" --out "$dir" \
    >"$OUT/$var/ttl${ttl}_${shape}_s${seed}.txt" 2>&1 &&
    mv "$dir/flowcontrol.json" "$OUT/$var/ttl${ttl}_${shape}_s${seed}.json" && rmdir "$dir"
  echo "end   $var ttl$ttl $shape s$seed $(date -u +%T) loadavg $(cat /proc/loadavg)" >>"$OUT/loadavg.txt"
}
n=0
for ttl in 1000 30; do
  for shape in 4x128 2x16; do
    for seed in $SEEDS; do
      for var in base alone; do
        cell "$var" "$ttl" "$shape" "$seed" &
        n=$((n + 1))
        if [ $((n % 4)) -eq 0 ]; then wait; fi
      done
    done
  done
done
wait
