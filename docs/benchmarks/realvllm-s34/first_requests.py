"""Where each tenant's first request went, per pass (vs_sglang.py JSONs), and the split it made.

Per pass of every router: for each tenant (regenerated from the run's seed with the script's own
workload()) the server its first request was served by, and the server the request before it was
served by (a scraped trace of that request still on the server would make its cost differ). Prints the
first requests' per-server count per pass ("7/1" = 7 on server 1, 1 on server 0), and over every kvgate
pass given, how many first requests went to the server that served the request before them.

    python docs/benchmarks/realvllm-s34/first_requests.py docs/benchmarks/realvllm-s33/s49-session33.json
(from the repository root)."""

import json
import sys

sys.path.insert(0, "scripts/realvllm")  # run from the repository root
from vs_sglang import workload

same = other = 0
for f in sys.argv[1:]:
    with open(f) as fh:
        d = json.load(fh)
    a = d["args"]
    prompts = workload(a["tenants"], a["per_tenant"], a["prefix_words"], a["seed"])
    systems: dict[str, int] = {}
    tenant = [systems.setdefault(p.split("\nUser ", 1)[0], len(systems)) for p in prompts]
    for name, passes in d["passes"].items():
        for i, p in enumerate(passes):
            firsts: dict[int, int] = {}
            prev = None
            for j, r in enumerate(p["records"]):
                t = tenant[j]
                if t not in firsts:
                    firsts[t] = r["server"]
                    if name.startswith("kvgate") and prev is not None:
                        same += prev == r["server"]
                        other += prev != r["server"]
                prev = r["server"]
            on1 = sum(1 for s in firsts.values() if s == 1)
            order = " ".join(f"t{t}>{s}" for t, s in firsts.items())
            print(
                f"{f.rsplit('/', 1)[-1]:22s} {name[:40]:40s} pass {i}: {on1}/{len(firsts) - on1}  ({order})"
            )
print(f"kvgate passes: a first request went to the server that served the request before it {same} times, "
      f"to the other {other} times")  # fmt: skip
