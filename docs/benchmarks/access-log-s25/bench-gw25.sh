#!/bin/bash
# /tmp/gw25-bench/{main,gw25}-on: copies of main 0cfe18cf's src and gw25's with the access log on: accessLog's default True
# (config/gateway.py), kvgate.access at INFO and access.stderr() returning open("/tmp/gw25-bench/<t>.log", "a", buffering=1 << 17).
# Run as `flock /work/team/live.lock docs/benchmarks/access-log-s25/bench-gw25.sh`.
# gw25: access log on (to a file) in both trees: main 0cfe18cf's src vs gw25's (writer thread); kvgate-rr = gw25, @base = main.
cd /work/wt/gw25
rm -f /tmp/gw25-bench/main.log /tmp/gw25-bench/gw25.log
uptime
PYTHONPATH=/tmp/gw25-bench/gw25-on timeout 500 /work/main/.venv/bin/python -m kvgate.cli bench gateway-overhead --paths kvgate-rr,kvgate-rr@base --requests 20000 --repeats 3 --streams 0 --base-src /tmp/gw25-bench/main-on 2>&1 | grep -v "^      "
uptime
wc -l /tmp/gw25-bench/main.log /tmp/gw25-bench/gw25.log
uptime
for t in main gw25 main gw25; do S=$([ $t = main ] && echo /work/main/src || echo /work/wt/gw25/src); PYTHONPATH=$S /work/main/.venv/bin/python docs/benchmarks/access-log-s25/micro-gw25.py $t; done
uptime
