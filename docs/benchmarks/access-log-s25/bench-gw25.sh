#!/bin/bash
# gw25's access-log writer thread, the line's own path (micro-gw25.py): the tree this script is in vs BASE (default
# e7cc9e9d, main before gw25), each twice, alternating. Rerunnable from a clean clone (review s25-rev-gw25 L1):
# BASE is checked out into a temporary git worktree, removed at the end. Run from anywhere as
#   flock /work/team/live.lock docs/benchmarks/access-log-s25/bench-gw25.sh   (PYTHON: the interpreter, default python)
# (gw25's first version also ran `kvgate bench gateway-overhead` on hand-patched copies, the log on, that were never in
# the repo; that part is gone: its figures stay in writer-thread-gw25.txt as recorded, not rerunnable.)
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
BASE=${BASE:-e7cc9e9d}
PY=${PYTHON:-python}
TMP=$(mktemp -d)
trap 'git -C "$ROOT" worktree remove --force "$TMP/base" >/dev/null 2>&1 || true; rm -rf "$TMP"' EXIT
git -C "$ROOT" worktree add --detach "$TMP/base" "$BASE" >/dev/null 2>&1
echo "base $BASE: $(git -C "$TMP/base" log -1 --format='%h %s' | cut -c1-80)"
echo "this: $(git -C "$ROOT" log -1 --format='%h %s' | cut -c1-80)"
uptime
for t in base this base this; do
  S=$([ $t = base ] && echo "$TMP/base/src" || echo "$ROOT/src")
  PYTHONPATH=$S "$PY" "$ROOT/docs/benchmarks/access-log-s25/micro-gw25.py" "$t"
done
uptime
