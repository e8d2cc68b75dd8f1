# ruff: noqa: E741, SIM115, RUF005  (a frozen one-off analysis script, kept as run)
import json
import os
import sys


def load(p):
    d = {}
    if not os.path.exists(p):
        return d
    for l in open(p):
        if l.strip():
            r = json.loads(l)
            d[r["seed"]] = r["p90_ms"]
    return d


names = ["kvgate", "sgl"] + sys.argv[1].split(",")
D = {n: load(f"runs-{n}.jsonl") for n in names}
seeds = sorted(set().union(*[set(d) for d in D.values()]))
print("seed " + " ".join(f"{n:>8s}" for n in names))
for s in seeds:
    v = [D[n].get(s) for n in names]
    if any(x and x >= 900 for x in v):
        print(f"{s:4d} " + " ".join(f"{x:8.0f}" if x else "       -" for x in v))
