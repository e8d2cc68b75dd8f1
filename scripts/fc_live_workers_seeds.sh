#!/usr/bin/env bash
# The `--workers` quiet-tenant goal's live runs (issue #15; docs/benchmarks/flowcontrol.md, the `--workers 2`
# sections of sessions 24-27): per seed four runs, each in its own hold of a lock, in this order:
# `--workers 2 --mixes calm`, `--workers 2 --mixes flood`, then the same two at `--workers 1` (the baseline
# of the same round). A run starts only if its hold begins before the cut-off (UTC, below); one that cannot
# is written down as not run. Every run records `cat /proc/loadavg` and `uptime` inside its hold, before
# and after, and `/proc/loadavg` every LOAD_EVERY seconds (default 30) while the bench runs (meta.json's
# "loadavg_during": [[UTC time, loadavg], ...]), beside the bench's JSON (with the trace, `--timing`).
#
#   scripts/fc_live_workers_seeds.sh SRC OUT CUTOFF SEED [SEED ...]
#
# SRC: the `src` folder of the code measured (a `git archive` snapshot, so the runs keep one code while the
# tree moves); OUT: one folder per run is made under it (`seed-S-MIX-wN/`: flowcontrol-live.json,
# meta.json); CUTOFF: e.g. 17:52 (today's clock, compared as text: "24:00" none is past, "00:00" all are),
# or any other time `date -d` reads, e.g. "2026-12-07 00:20" (UTC; read once at the start: wk29, a plain
# 00:20 from 23:18 read as past). Env: LOCK (default /work/team/live.lock), KVGATE (default `kvgate` on
# PATH), WORKERS (default "2 1"), LOAD_EVERY (default 30), ARM (default kvgate-reserve-feasible, the arm of
# sessions 24-29; since wk32 the goal configuration's kvgate-reserve-feasible+alone: `--arms`, one arm a
# run, written in meta.json's "arm"). Then
#   python scripts/fc_live_ratio_interval.py --goal OUT/seed-S-calm-w2/flowcontrol-live.json \
#     OUT/seed-S-flood-w2/flowcontrol-live.json ...
# prints the goal's figure and its two-level interval.
set -u
if [ $# -lt 4 ]; then
    sed -n 2,20p "$0" >&2
    exit 2
fi
SRC=$(cd "$1" && pwd)
OUT=$2
CUTOFF=$3
shift 3
LOCK=${LOCK:-/work/team/live.lock}
KVGATE=${KVGATE:-kvgate}
WORKERS=${WORKERS:-2 1}
ARM=${ARM:-kvgate-reserve-feasible}
LOAD_EVERY=${LOAD_EVERY:-30}
CODE=${CODE:-$SRC}
mkdir -p "$OUT"
CUTOFF_S=
if ! [[ "$CUTOFF" =~ ^[0-9][0-9]:[0-9][0-9]$ ]]; then
    CUTOFF_S=$(date -u -d "$CUTOFF" +%s) || { echo "cut-off '$CUTOFF': not a time date(1) reads" >&2; exit 2; }
fi

past_cutoff() {  # is it now at or past the cut-off?
    if [ -n "$CUTOFF_S" ]; then
        [ "$(date -u +%s)" -ge "$CUTOFF_S" ]
    else
        local now
        now=$(date -u +%H:%M)
        [[ "$now" > "$CUTOFF" || "$now" == "$CUTOFF" ]]
    fi
}

one_run() {  # inside the lock: SEED MIX WORKERS DIR
    local seed=$1 mix=$2 workers=$3 dir=$4
    mkdir -p "$dir"
    if past_cutoff; then
        printf '{"seed": %s, "mix": "%s", "workers": %s, "not_run": "hold began %s UTC, at or past the cut-off %s"}\n' \
            "$seed" "$mix" "$workers" "$(date -u +%T)" "$CUTOFF" >"$dir/meta.json"
        echo "seed $seed $mix workers $workers: not run (hold began $(date -u +%T), cut-off $CUTOFF)"
        return 0
    fi
    local t0 l0 u0 t1 l1 u1 rc sampler
    t0=$(date -u +%T); l0=$(cat /proc/loadavg); u0=$(uptime)
    echo "seed $seed $mix workers $workers: start $t0 loadavg $l0"
    : >"$dir/loadavg-during.txt"
    # (the machine is shared: the load while the bench runs, not only at its ends)
    # Its sleep goes with it: an orphaned one would hold the live lock's inherited descriptor past the run.
    (
        trap 'kill "$nap" 2>/dev/null; exit 0' TERM
        while :; do
            sleep "$LOAD_EVERY" & nap=$!
            wait "$nap"
            echo "$(date -u +%T) $(cat /proc/loadavg)"
        done >>"$dir/loadavg-during.txt"
    ) &
    sampler=$!
    env PYTHONPATH="$SRC" nice -n 10 "$KVGATE" bench flowcontrol --live \
        --replicas 2 --max-num-seqs 16 --load 0.9 --duration 80 --warmup 5 --time-scale 0.25 \
        --mixes "$mix" --arms "$ARM" --headroom 0.75 --headroom-on pending \
        --ttft-target 0.05 --running-reserve --seed "$seed" --workers "$workers" --timing \
        --out "$dir" >"$dir/bench.log" 2>&1
    rc=$?
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    t1=$(date -u +%T); l1=$(cat /proc/loadavg); u1=$(uptime)
    echo "seed $seed $mix workers $workers: end $t1 rc $rc loadavg $l1"
    python3 - "$dir/meta.json" "$seed" "$mix" "$workers" "$CODE" "$t0" "$t1" "$l0" "$l1" "$u0" "$u1" "$rc" "$ARM" <<'EOF'
import json, sys
path, seed, mix, workers, code, t0, t1, l0, l1, u0, u1, rc, arm = sys.argv[1:]
during_txt = path.rsplit("/", 1)[0] + "/loadavg-during.txt"
during = [line.split(" ", 1) for line in open(during_txt).read().splitlines() if " " in line]
json.dump({"seed": int(seed), "mix": mix, "workers": int(workers), "arm": arm, "code": code, "start_utc": t0,
           "end_utc": t1, "loadavg_start": l0, "loadavg_end": l1, "uptime_start": u0.strip(),
           "uptime_end": u1.strip(), "loadavg_during": during, "rc": int(rc)}, open(path, "w"), indent=1)
EOF
}
export -f one_run past_cutoff
export SRC CUTOFF CUTOFF_S KVGATE CODE LOAD_EVERY ARM

for seed in "$@"; do
    for w in $WORKERS; do
        for mix in calm flood; do
            flock "$LOCK" bash -c 'one_run "$@"' _ "$seed" "$mix" "$w" "$OUT/seed-$seed-$mix-w$w"
        done
    done
done
