# ruff: noqa: E741, SIM115, E402  (a frozen one-off analysis script, kept as run)
import json
import math
import sys


def load(p):
    d = {}
    for l in open(p):
        if l.strip():
            r = json.loads(l)
            d[r["seed"]] = r["p90_ms"]
    return d


def gm(xs):
    return math.exp(sum(map(math.log, xs)) / len(xs))


def pair(c, b, seeds):
    seeds = [s for s in seeds if s in c and s in b]
    if not seeds:
        return "n=0"
    logs = [math.log(c[s] / b[s]) for s in seeds]
    n = len(logs)
    m = sum(logs) / n
    sd = (sum((x - m) ** 2 for x in logs) / (n - 1)) ** 0.5 if n > 1 else 0
    h = 1.96 * sd / n**0.5
    bt = sum(c[s] < b[s] for s in seeds)
    w = sum(c[s] > b[s] for s in seeds)
    return (
        f"n={n} {math.exp(m):.3f} ({math.exp(m - h):.3f}-{math.exp(m + h):.3f}) b/w/e {bt}/{w}/{n - bt - w}"
    )


base = load("runs-kvgate.jsonl")
import os

sgl = load("runs-sgl.jsonl") if os.path.exists("runs-sgl.jsonl") else {}
tun = list(range(104, 114))
used = list(range(315, 405))
over = [s for s in used + tun if base.get(s, 0) >= 1000]
overs = [s for s in used + tun if sgl.get(s, 0) >= 1000]
for p in sys.argv[1].split(","):
    c = load(f"runs-{p}.jsonl")
    print(f"== {p}")
    for nm, ss in (
        ("tuning 104-113", tun),
        ("used-fresh 315-404", used),
        ("overloaded (default>=1s)", over),
        ("the rest of used-fresh", [s for s in used if s not in over]),
        ("sglang>=1s (policy-indep.)", overs),
        ("used-fresh w/o sglang>=1s", [s for s in used if s not in overs]),
    ):
        print(f"  {nm:26s} vs default {pair(c, base, ss):45s} vs sglang {pair(c, sgl, ss)}")
print("default vs sglang:", "tuning", pair(base, sgl, tun), "| used-fresh", pair(base, sgl, used))
print(
    "overloaded seeds:",
    over,
    {s: (base[s], load(f"runs-{sys.argv[1].split(',')[0]}.jsonl").get(s)) for s in over},
)
