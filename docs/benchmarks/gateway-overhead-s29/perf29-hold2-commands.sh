#!/bin/bash
# perf29 lock hold 2: base = git archive of main 11cbef01 (/tmp/perf29/base), cut1 = git archive of perf29 dc8eb82a
# (/tmp/perf29/this), this = git archive of perf29 245be61e, cuts 1 and 2 (/tmp/perf29/snap)
set -u
PY=/work/main/.venv/bin/python
kill -STOP -32094 2>/dev/null && echo "(perf29's own niced callgrind count paused for the hold)"
echo "hold start $(date -u +%T) uptime: $(cat /proc/loadavg)"
cd /tmp/perf29/snap
PYTHONPATH=/tmp/perf29/snap/src $PY -m kvgate.cli bench gateway-overhead --requests 10000 --repeats 6 --streams 0 \
  --base-src /tmp/perf29/base/src --paths kvgate@base/cpu1,kvgate/cpu1,sglang-router:cache_aware/cpu1
echo "bench end $(date -u +%T) uptime: $(cat /proc/loadavg)"
PYTHONPATH=/tmp/perf29/snap/src $PY scripts/gateway_path_cost.py --base-src /tmp/perf29/this/src --requests 5000 --rounds 5 --repeats 3
echo "hold end $(date -u +%T) uptime: $(cat /proc/loadavg)"
kill -CONT -32094 2>/dev/null
