#!/bin/bash
# cpu35: perf record (1999 Hz, dwarf call graphs) of `kvgate serve` (SRC's tree, compiled or not) under the
# gateway-overhead load (its backend and load generator, 64 connections; ports 2800x, not the bench's);
# then: perf script -i /tmp/cpu35/perf.data -F ip,sym,dso > script.txt; python fold.py script.txt 50
# perf profile of kvgate serve (SRC's) under the gateway-overhead load (ports 2800x, not the bench's)
set -u
mkdir -p /tmp/cpu35
PY=/work/main/.venv/bin/python
export PYTHONPATH=${SRC:-/work/wt/cpu35/src}
$PY -m kvgate.bench.gateway_overhead --_backend 28001 28002 > /tmp/cpu35/be.log 2>&1 &
BE=$!
sleep 1
$PY -m kvgate.cli serve --endpoints http://127.0.0.1:28001,http://127.0.0.1:28002 --model m --policy kvgate --port 28080 --log-level WARNING --workers 1 > /tmp/cpu35/gw.log 2>&1 &
GW=$!
for i in $(seq 240); do grep -q listening /tmp/cpu35/gw.log && break; sleep 0.5; done
$PY -m kvgate.bench.gateway_overhead --_loadgen 28080 3000 64 0 0 > /dev/null
perf record -F 1999 --call-graph dwarf,8192 -p $GW -o /tmp/cpu35/perf.data 2>/tmp/cpu35/perf.err &
PF=$!
sleep 0.5
$PY -m kvgate.bench.gateway_overhead --_loadgen 28080 ${N:-30000} 64 0 0
kill -INT $PF; wait $PF
kill $GW $BE; wait
true
