#!/bin/bash
# Instructions per request of the gateway's Python path, this tree against another: a count, not a time,
# so other work on the machine does not move it (valgrind's cachegrind; Python's own hashing seeded).
#
#     scripts/gateway_path_instructions.sh BASE_SRC [POLICY] [N1] [N2]
#
# For each tree (BASE_SRC, then this checkout's src/), runs scripts/gateway_path_cost.py's in-memory
# request loop (its _measure: the bench's request through the real front, proxy, picker, upstream client
# and metrics, sockets replaced by in-memory transports; 2,000 warm-up requests first) for N1 and for N2
# requests under `valgrind --tool=cachegrind --cache-sim=no`, and prints (I refs(N2) - I refs(N1)) /
# (N2 - N1): the instructions of one request, start-up and warm-up cancelled out. Defaults: kvgate, 100,
# 2100. Takes a few minutes (valgrind runs the interpreter ~50x slower). Needs valgrind.
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
BASE=$(cd "$1" && pwd); POLICY=${2:-kvgate}; N1=${3:-100}; N2=${4:-2100}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
irefs() {  # src, requests
  PYTHONHASHSEED=0 PYTHONPATH=$1 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
    "$PY" -c "import sys; sys.path.insert(0, '$HERE/scripts'); import gateway_path_cost as g; \
g._measure($2, 1, '$POLICY')" 2>&1 | sed -n 's/.*I *refs: *//p' | tr -d ,
}
declare -A per
for name in base this; do
  src=$BASE; [ $name = this ] && src=$HERE/src
  a=$(irefs "$src" "$N1"); b=$(irefs "$src" "$N2")
  per[$name]=$(( (b - a) / (N2 - N1) ))
  echo "$name ($src): $a instructions at $N1 requests, $b at $N2: ${per[$name]} per request"
done
awk -v b="${per[base]}" -v t="${per[this]}" 'BEGIN { printf "this / base: %.3fx (policy '"$POLICY"')\n", t / b }'
