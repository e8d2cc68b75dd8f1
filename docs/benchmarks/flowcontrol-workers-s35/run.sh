#!/usr/bin/env bash
# live35's driver of the pre-registered runs (PLAN.md): the runner once per seed, in the declared order, a seed
# started only before SEED_CUTOFF_S (its flood run must be able to begin before the runner's CUTOFF).
#   run.sh RUNNER SNAPSHOT_SRC OUT SPARE SEED [SEED ...]   (env: CODE, LOCK, KVGATE, WORKERS, ARM as the runner's)
# SPARE runs after the seeds, once, only if a run of theirs exited non-zero (a machine failure: PLAN.md).
set -u
RUNNER=$1 SNAP=$2 OUT=$3 SPARE=$4
shift 4
SEED_CUTOFF_S=$(date -u -d "2026-12-07 20:42" +%s)
failed() {  # did any run of these seeds exit non-zero?
    python3 - "$OUT" "$@" <<'PY'
import json, pathlib, sys
out, seeds = pathlib.Path(sys.argv[1]), sys.argv[2:]
bad = [m for s in seeds for m in out.glob(f"seed-{s}-*-w*/meta.json") if json.loads(m.read_text()).get("rc", 0)]
sys.exit(0 if bad else 1)
PY
}
run_seeds() {
for seed in "$@"; do
    if [ "$(date -u +%s)" -ge "$SEED_CUTOFF_S" ]; then
        echo "seed $seed: not started ($(date -u +%T) UTC, at or past 20:42)"
        echo "seed $seed: not started, $(date -u +%T) UTC at or past 20:42" >>"$OUT/not-started.txt"
        continue
    fi
    "$RUNNER" "$SNAP" "$OUT" "2026-12-07 20:50" "$seed"
done
}
run_seeds "$@"
if failed "$@"; then
    echo "a run failed: the spare $SPARE"
    run_seeds "$SPARE"
fi
