#!/bin/bash
# perf29 lock hold 1: base = git archive of main 11cbef01, this = git archive of perf29 dc8eb82a (cut 1)
set -u
PY=/work/main/.venv/bin/python
echo "hold start $(date -u +%T) uptime: $(cat /proc/loadavg)"
cd /tmp/perf29/this
PYTHONPATH=/tmp/perf29/this/src $PY -m kvgate.cli bench gateway-overhead --requests 10000 --repeats 6 --streams 0 \
  --base-src /tmp/perf29/base/src --paths kvgate@base/cpu1,kvgate/cpu1,sglang-router:cache_aware/cpu1
echo "bench end $(date -u +%T) uptime: $(cat /proc/loadavg)"
PYTHONPATH=/tmp/perf29/this/src $PY scripts/gateway_path_cost.py --base-src /tmp/perf29/base/src --requests 5000 --rounds 5 --repeats 3
echo "hold end $(date -u +%T) uptime: $(cat /proc/loadavg)"
