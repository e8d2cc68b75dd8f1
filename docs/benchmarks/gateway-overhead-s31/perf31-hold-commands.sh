#!/bin/bash
# perf31 lock hold: the compiled build as landed (scripts/build_compiled.py's MODULES, the front and the body
# parse back in) against the same sources pure and sglang-router cache_aware, each router on one core.
#   COMPILED = a tree of the sources after `python scripts/build_compiled.py` (the .so files beside them)
#   PURE     = the same sources without extension modules
# Run as: flock /work/team/live.lock bash docs/benchmarks/gateway-overhead-s31/perf31-hold-commands.sh COMPILED PURE
set -u
COMPILED=$1
PURE=$2
PY=${PYTHON:-python}
echo "hold start $(date -u +%T) loadavg: $(cat /proc/loadavg)"
cd "$COMPILED"
for m in httpfront.server openai.request requestcontrol.director scheduling.plugins.no_hit_lru; do
  PYTHONPATH=$COMPILED/src $PY -c "import kvgate.$m as m; print('compiled imports', m.__file__)"
  PYTHONPATH=$PURE/src $PY -c "import kvgate.$m as m; print('pure imports', m.__file__)"
done
PYTHONPATH=$COMPILED/src $PY -m kvgate.cli bench gateway-overhead --requests 10000 --repeats 6 --streams 0 \
  --base-src "$PURE/src" --paths kvgate@base/cpu1,kvgate/cpu1,sglang-router:cache_aware/cpu1
echo "bench end $(date -u +%T) loadavg: $(cat /proc/loadavg)"
PYTHONPATH=$COMPILED/src $PY scripts/gateway_path_cost.py --base-src "$PURE/src" --requests 5000 --rounds 5 --repeats 3
echo "hold end $(date -u +%T) loadavg: $(cat /proc/loadavg)"
