#!/bin/bash
# cpu35 lock hold: main at 07828308 against the cpu35 tree, compiled (scripts/build_compiled.py run in
# each tree) and pure, each beside sglang-router cache_aware in the same bench run, every router on one
# core; then the same pairs in process (scripts/gateway_path_cost.py). Session 32's commands
# (gateway-overhead-s32/perf32-hold-commands.sh); with a fifth argument, a third pair: AFTER_C against
# THIRD_C (hold 1: the step from one tried build to the next; docs/benchmarks/gateway.md, Session 35).
#   MAIN_C / MAIN_P     = main at 07828308 (git archive), with / without the extension modules
#   AFTER_C / AFTER_P   = a cpu35 tree's sources, with / without them
#   THIRD_C             = (optional) another cpu35 tree, compiled
# Then the streamed path, compiled (scripts/gateway_stream_cpu.py: 16 SSE events a request).
# Run as: flock /work/team/live.lock bash docs/benchmarks/gateway-overhead-s35/cpu35-hold-commands.sh \
#           MAIN_C MAIN_P AFTER_C AFTER_P [THIRD_C]
set -u
MAIN_C=$1
MAIN_P=$2
AFTER_C=$3
AFTER_P=$4
THIRD_C=${5:-}
PY=${PYTHON:-python}
echo "hold start $(date -u +%T) loadavg: $(cat /proc/loadavg)"
for m in gateway.proxy gateway.stream datalayer.health scheduling.types scheduling.plugins.pickers; do
  for t in "$MAIN_C" "$MAIN_P" "$AFTER_C" "$AFTER_P" ${THIRD_C:+"$THIRD_C"}; do
    PYTHONPATH=$t/src $PY -c "import kvgate.$m as m; print('imports', m.__file__)"
  done
done
pairs=("$MAIN_C $AFTER_C compiled" "$MAIN_P $AFTER_P pure")
[ -n "$THIRD_C" ] && pairs+=("$AFTER_C $THIRD_C third-compiled")
for pair in "${pairs[@]}"; do
  set -- $pair
  echo "== $3: kvgate@base = $1 (before), kvgate = $2 (after); bench start $(date -u +%T) loadavg: $(cat /proc/loadavg)"
  (cd "$2" && PYTHONPATH=$2/src $PY -m kvgate.cli bench gateway-overhead --requests 10000 --repeats 6 --streams 0 \
    --base-src "$1/src" --paths kvgate@base/cpu1,kvgate/cpu1,sglang-router:cache_aware/cpu1)
  echo "bench end $(date -u +%T) loadavg: $(cat /proc/loadavg)"
  (cd "$2" && PYTHONPATH=$2/src $PY scripts/gateway_path_cost.py --base-src "$1/src" --requests 5000 --rounds 5 --repeats 3)
  echo "path cost end $(date -u +%T) loadavg: $(cat /proc/loadavg)"
done
echo "== streamed, compiled: base = $MAIN_C, this = $AFTER_C; start $(date -u +%T) loadavg: $(cat /proc/loadavg)"
(cd "$AFTER_C" && PYTHONPATH=$AFTER_C/src $PY scripts/gateway_stream_cpu.py --base-src "$MAIN_C/src" --requests 3000 \
  --events 16 --repeats 3)
echo "hold end $(date -u +%T) loadavg: $(cat /proc/loadavg)"
