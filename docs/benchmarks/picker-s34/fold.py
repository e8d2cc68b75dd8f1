"""Share of the timed picks' samples per function (inclusive, self) and per line (self), from a py-spy raw
profile of ``bench_pick`` (session 34, pick34):

    py-spy record -r 2000 -f raw -o OUT.folded -- env PYTHONPATH=<tree>/src python -c \
        "from kvgate.bench.picker_micro import bench_pick; \
        [bench_pick('kvgate', 64, 4096, 3000, seed=s) for s in range(3) for _ in range(2)]"
    python docs/benchmarks/picker-s34/fold.py OUT.folded [N]

Only stacks under the timed loop's ``d.pick(r)`` (``picker_micro.py:110``) count: the warm-up picks and
the set-up do not."""

import collections
import re
import sys

TIMED = "bench_pick (kvgate/bench/picker_micro.py:110)"
self_f: collections.Counter[str] = collections.Counter()
incl: collections.Counter[str] = collections.Counter()
self_line: collections.Counter[str] = collections.Counter()
total = 0
with open(sys.argv[1]) as f:
    for line in f:
        stack, n_s = line.rsplit(" ", 1)
        frames = stack.split(";")
        if TIMED not in frames:
            continue
        n = int(n_s)
        total += n
        sub = frames[frames.index(TIMED) + 1 :]
        if not sub:  # (a sample in the timing lines themselves)
            continue
        for fn in {re.sub(r":\d+\)$", ")", fr) for fr in sub}:
            incl[fn] += n
        self_f[re.sub(r":\d+\)$", ")", sub[-1])] += n
        self_line[sub[-1]] += n
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
print("samples", total)
for title, c in (("inclusive", incl), ("self", self_f), ("self, by line", self_line)):
    print("---", title)
    for k, v in c.most_common(top):
        print(f"{v / total * 100:5.1f}% {k}")
