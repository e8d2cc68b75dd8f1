#!/bin/bash
# The picker row's cell (kvgate policy, 64 endpoints, 4 KB prompts, 3,000 picks, seeds 0-2) on each tree in
# turn, ROUNDS times: `docs/benchmarks/picker-s33/alternate.sh ROUNDS SRC...` on a quiet machine (the team ran it under
# `flock` on a lock file shared by its sessions, so that no other timed run overlapped).
# (SRC: a tree's src/, e.g. `git archive <commit> src | tar -x -C /tmp/t` then /tmp/t/src). Each line: (wall
# p50, wall p99, CPU p50, CPU p99) in us, as kvgate.bench.picker_micro.bench_pick returns them.
rounds=$1; shift
# The repository's virtualenv (`make venv`), not whatever `python` is first on PATH; PYTHON overrides it.
PY=${PYTHON:-$(cd "$(dirname "$0")/../../.." && pwd)/.venv/bin/python}
CMD="from kvgate.bench.picker_micro import bench_pick; [print(bench_pick('kvgate', 64, 4096, 3000, seed=s)) for s in range(3)]"
for round in $(seq "$rounds"); do
  for src in "$@"; do
    echo "== $src round $round $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
    PYTHONPATH=$src "$PY" -c "$CMD"
  done
done
echo "== end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
