#!/bin/bash
# cpu27's lock hold (17:10-17:12 UTC): base = `git archive 6782b99d` (main) unpacked at /tmp/cpu27/base, this = the src of branch cpu27 at 6921467c copied to /tmp/cpu27/this
cd /work/wt/cpu27
B=/tmp/cpu27/base/src; T=/tmp/cpu27/this/src; PY=/work/main/.venv/bin/python
date -u; uptime
for run in A B; do
  echo "=== run $run"; date -u; uptime
  PYTHONPATH=$T $PY -m kvgate.cli bench gateway-overhead --requests 10000 --repeats 6 --streams 0 --pin \
    --base-src $B --paths direct,kvgate@base,kvgate,kvgate-rr,sglang-router:cache_aware
  date -u; uptime
done
echo "=== in-process"; date -u; uptime
PYTHONPATH=$T $PY scripts/gateway_path_cost.py --base-src $B --requests 5000 --rounds 5 --repeats 3
date -u; uptime
