#!/bin/bash
# perf32 lock hold: before (main at 2b9dcdff) and after (this branch), each compiled (scripts/build_compiled.py
# run in its tree: after = gateway/proxy.py compiled too) and pure, against sglang-router cache_aware in the
# same bench run, each router on one core. perf31's commands (perf31-hold-commands.sh), run twice: compiled
# before -> after, then pure before -> after.
#   BEFORE_C / BEFORE_P = main at 2b9dcdff (git archive), with / without the extension modules
#   AFTER_C / AFTER_P   = this branch's sources, with / without them
# Run as: flock /work/team/live.lock bash docs/benchmarks/gateway-overhead-s32/perf32-hold-commands.sh \
#           BEFORE_C BEFORE_P AFTER_C AFTER_P
set -u
BEFORE_C=$1
BEFORE_P=$2
AFTER_C=$3
AFTER_P=$4
PY=${PYTHON:-python}
echo "hold start $(date -u +%T) loadavg: $(cat /proc/loadavg)"
for m in gateway.proxy httpfront.server requestcontrol.director; do
  for t in "$BEFORE_C" "$BEFORE_P" "$AFTER_C" "$AFTER_P"; do
    PYTHONPATH=$t/src $PY -c "import kvgate.$m as m; print('imports', m.__file__)"
  done
done
for pair in "$BEFORE_C $AFTER_C compiled" "$BEFORE_P $AFTER_P pure"; do
  set -- $pair
  echo "== $3: kvgate@base = $1 (before), kvgate = $2 (after); bench start $(date -u +%T) loadavg: $(cat /proc/loadavg)"
  (cd "$2" && PYTHONPATH=$2/src $PY -m kvgate.cli bench gateway-overhead --requests 10000 --repeats 6 --streams 0 \
    --base-src "$1/src" --paths kvgate@base/cpu1,kvgate/cpu1,sglang-router:cache_aware/cpu1)
  echo "bench end $(date -u +%T) loadavg: $(cat /proc/loadavg)"
  (cd "$2" && PYTHONPATH=$2/src $PY scripts/gateway_path_cost.py --base-src "$1/src" --requests 5000 --rounds 5 --repeats 3)
  echo "path cost end $(date -u +%T) loadavg: $(cat /proc/loadavg)"
done
echo "hold end $(date -u +%T) loadavg: $(cat /proc/loadavg)"
