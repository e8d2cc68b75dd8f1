#!/bin/bash
# perf30 lock hold: pure = the perf30 branch's tree without extension modules (/tmp/perf30/p2), compiled = the
# same tree after `python scripts/build_compiled.py` (/tmp/perf30/c2: the same sources, plus the .so files).
# Run as: flock /work/team/live.lock bash docs/benchmarks/gateway-overhead-s30/perf30-hold-commands.sh
set -u
PY=/work/main/.venv/bin/python
echo "hold start $(date -u +%T) loadavg: $(cat /proc/loadavg)"
cd /tmp/perf30/c2
PYTHONPATH=/tmp/perf30/c2/src $PY -c 'import kvgate.requestcontrol.director as d; print("this imports", d.__file__)'
PYTHONPATH=/tmp/perf30/c2/src $PY -m kvgate.cli bench gateway-overhead --requests 10000 --repeats 6 --streams 0 \
  --base-src /tmp/perf30/p2/src --paths kvgate@base/cpu1,kvgate/cpu1,sglang-router:cache_aware/cpu1
echo "bench end $(date -u +%T) loadavg: $(cat /proc/loadavg)"
PYTHONPATH=/tmp/perf30/c2/src $PY scripts/gateway_path_cost.py --base-src /tmp/perf30/p2/src --requests 5000 --rounds 5 --repeats 3
echo "hold end $(date -u +%T) loadavg: $(cat /proc/loadavg)"
